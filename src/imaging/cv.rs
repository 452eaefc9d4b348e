//! OpenCV's operations on 8-bit single-channel images, reproduced bit for bit (checked against
//! OpenCV 4.10 by `scripts/fixtures/cv_ops.py`), for the masks that must match reference code
//! written with OpenCV:
//!
//! - [`dilate`]: `cv2.dilate` with a square kernel of ones, the default anchor and border;
//! - [`resize_nearest`] and [`resize_nearest_by`]: `cv2.resize` with `INTER_NEAREST`, to a size
//!   or by factors;
//! - [`fill_external_hulls`]: `cv2.findContours(RETR_EXTERNAL)`, `cv2.convexHull` of each
//!   contour and `cv2.fillPoly` of the hulls, united;
//! - [`gaussian_blur`]: `cv2.GaussianBlur` with σ = 0 (derived from the kernel size), OpenCV's
//!   default border (`BORDER_REFLECT_101`) and its bit-exact fixed-point path for 8-bit images.
//!
//! Images are [`GrayImage`]s; binary masks are 0 and non-zero.

use image::GrayImage;

use super::morphology::{label_components, reaches_border, Connectivity, Grid};

/// `cv2.dilate(src, np.ones((size, size)), iterations=iterations)`: the maximum over a
/// `size × size` square anchored at its centre (`size / 2`), pixels outside the image left out
/// (OpenCV's default constant border for dilation is the type's minimum). Repeated dilations
/// by a square are one dilation by a larger square, which is how OpenCV runs them too.
pub fn dilate(src: &GrayImage, size: u32, iterations: u32) -> GrayImage {
    let (width, height) = (src.width() as usize, src.height() as usize);
    if size <= 1 || iterations == 0 || width == 0 || height == 0 {
        return src.clone();
    }
    let anchor = (size / 2) as usize;
    let before = anchor * iterations as usize;
    let after = (size as usize - 1 - anchor) * iterations as usize;

    // Rows, then columns; each pass is a running maximum of whole shifted slices, which the
    // compiler vectorises.
    let mut rows = src.as_raw().clone();
    for (src_row, dst_row) in src.as_raw().chunks(width).zip(rows.chunks_mut(width)) {
        for shift in 1..=before.min(width - 1) {
            max_into(&mut dst_row[shift..], &src_row[..width - shift]);
        }
        for shift in 1..=after.min(width - 1) {
            max_into(&mut dst_row[..width - shift], &src_row[shift..]);
        }
    }
    let mut out = rows.clone();
    for (y, dst_row) in out.chunks_mut(width).enumerate() {
        let first = y.saturating_sub(before);
        let last = (y + after).min(height - 1);
        for other in (first..=last).filter(|&r| r != y) {
            max_into(dst_row, &rows[other * width..(other + 1) * width]);
        }
    }
    gray(width, height, out)
}

/// `dst[i] = max(dst[i], src[i])`.
fn max_into(dst: &mut [u8], src: &[u8]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = (*d).max(s);
    }
}

/// `cv2.resize(src, (width, height), interpolation=cv2.INTER_NEAREST)`.
pub fn resize_nearest(src: &GrayImage, width: u32, height: u32) -> GrayImage {
    let scale_x = f64::from(width) / f64::from(src.width());
    let scale_y = f64::from(height) / f64::from(src.height());
    resize_nearest_with(src, width, height, scale_x, scale_y)
}

/// `cv2.resize(src, None, fx=fx, fy=fy, interpolation=cv2.INTER_NEAREST)`: the size is the
/// source's times the factors, rounded half to even (`saturate_cast<int>`).
pub fn resize_nearest_by(src: &GrayImage, fx: f64, fy: f64) -> GrayImage {
    let width = (f64::from(src.width()) * fx).round_ties_even().max(0.0) as u32;
    let height = (f64::from(src.height()) * fy).round_ties_even().max(0.0) as u32;
    resize_nearest_with(src, width, height, fx, fy)
}

/// OpenCV's `resizeNN`: destination pixel `x` reads source `floor(x / scale)`, clamped.
fn resize_nearest_with(
    src: &GrayImage,
    width: u32,
    height: u32,
    scale_x: f64,
    scale_y: f64,
) -> GrayImage {
    let (src_width, src_height) = (src.width() as usize, src.height() as usize);
    let (width, height) = (width as usize, height as usize);
    if src_width == 0 || src_height == 0 {
        return gray(width, height, vec![0; width * height]);
    }
    let (inverse_x, inverse_y) = (1.0 / scale_x, 1.0 / scale_y);
    let source_index = |i: usize, inverse: f64, len: usize| -> usize {
        ((i as f64 * inverse).floor().max(0.0) as usize).min(len - 1)
    };
    let columns: Vec<usize> = (0..width)
        .map(|x| source_index(x, inverse_x, src_width))
        .collect();
    let raw = src.as_raw();
    let mut out = Vec::with_capacity(width * height);
    for y in 0..height {
        let row = &raw[source_index(y, inverse_y, src_height) * src_width..][..src_width];
        out.extend(columns.iter().map(|&x| row[x]));
    }
    gray(width, height, out)
}

/// The union of the filled convex hulls of the outer contours of `src`'s non-zero pixels, in
/// 255 on 0: what `findContours(RETR_EXTERNAL)` + `convexHull` + `fillPoly(…, 255)` draw.
///
/// An outer contour is the boundary of an 8-connected region of non-zero pixels that is not
/// inside a hole of another region (OpenCV pads the image with zeros, so regions touching the
/// border count). The hull of that boundary is the hull of the region's pixels, and these
/// come from each row's ends; each hull is then drawn as `fillPoly` draws it.
pub fn fill_external_hulls(src: &GrayImage) -> GrayImage {
    let (width, height) = (src.width() as usize, src.height() as usize);
    let grid = Grid { width, height };
    let set: Vec<bool> = src.as_raw().iter().map(|&v| v != 0).collect();
    let (labels, regions) = label_components(&set, grid, Connectivity::Eight);

    // Regions that touch the background connected (4-way) to the outside are the outer ones.
    let unset: Vec<bool> = set.iter().map(|&s| !s).collect();
    let outside = reaches_border(&unset, grid, None);
    let mut external = vec![false; regions.len() + 1];
    for y in 0..height {
        for x in 0..width {
            let label = labels[grid.index(x, y)] as usize;
            if label == 0 || external[label] {
                continue;
            }
            let on_border = x == 0 || y == 0 || x + 1 == width || y + 1 == height;
            external[label] = on_border
                || outside[grid.index(x - 1, y)]
                || outside[grid.index(x + 1, y)]
                || outside[grid.index(x, y - 1)]
                || outside[grid.index(x, y + 1)];
        }
    }

    // Each region's row ends, as (x, y).
    let mut points: Vec<Vec<(i64, i64)>> = vec![Vec::new(); regions.len()];
    for y in 0..height {
        let row = &labels[y * width..(y + 1) * width];
        for x in 0..width {
            let label = row[x] as usize;
            if label == 0 || !external[label] {
                continue;
            }
            let run_start = x == 0 || row[x - 1] as usize != label;
            let run_end = x + 1 == width || row[x + 1] as usize != label;
            if run_start || run_end {
                points[label - 1].push((x as i64, y as i64));
            }
        }
    }
    let mut out = gray(width, height, vec![0; width * height]);
    for region_points in &mut points {
        if region_points.is_empty() {
            continue;
        }
        let hull = convex_hull(region_points);
        fill_poly(&mut out, &hull, 255);
    }
    out
}

/// The corners of the convex hull of integer points (x, y), without collinear points, in
/// counter-clockwise order (y down); one or two points for degenerate sets. Sorts `points`.
pub fn convex_hull(points: &mut [(i64, i64)]) -> Vec<(i64, i64)> {
    points.sort_unstable();
    let mut unique = points.to_vec();
    unique.dedup();
    if unique.len() < 3 {
        return unique;
    }
    let cross = |o: (i64, i64), a: (i64, i64), b: (i64, i64)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    let mut hull: Vec<(i64, i64)> = Vec::with_capacity(unique.len() + 1);
    for &p in &unique {
        while hull.len() >= 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0 {
            hull.pop();
        }
        hull.push(p);
    }
    let lower_len = hull.len() + 1;
    for &p in unique.iter().rev().skip(1) {
        while hull.len() >= lower_len && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0 {
            hull.pop();
        }
        hull.push(p);
    }
    hull.pop();
    hull
}

/// Fixed-point bits of OpenCV's polygon edges (`XY_SHIFT`).
const XY_SHIFT: u32 = 16;

/// `cv2.fillPoly(img, [polygon], value)` for one polygon with integer corners (x, y), 8-connected
/// lines, no shift: each edge drawn as a line, then the rows filled between pairs of edge
/// crossings, the crossings tracked in 16.16 fixed point as OpenCV's `FillEdgeCollection` does.
pub fn fill_poly(img: &mut GrayImage, polygon: &[(i64, i64)], value: u8) {
    struct Edge {
        top: i64,
        bottom: i64,
        x: i64,
        dx: i64,
    }
    let Some(&last) = polygon.last() else {
        return;
    };
    let half = 1i64 << (XY_SHIFT - 1);
    let mut edges = Vec::with_capacity(polygon.len());
    let mut from = last;
    for &to in polygon {
        draw_line(img, from, to, value);
        if from.1 != to.1 {
            let (from_x, to_x) = ((from.0 << XY_SHIFT) + half, (to.0 << XY_SHIFT) + half);
            let dx = (to_x - from_x) / (to.1 - from.1);
            let (top, bottom, x) = if from.1 < to.1 {
                (from.1, to.1, from_x)
            } else {
                (to.1, from.1, to_x)
            };
            edges.push(Edge { top, bottom, x, dx });
        }
        from = to;
    }
    if edges.len() < 2 {
        return;
    }
    let (width, height) = (i64::from(img.width()), i64::from(img.height()));
    let first_row = edges.iter().map(|e| e.top).min().unwrap_or(0).max(0);
    let end_row = edges
        .iter()
        .map(|e| e.bottom)
        .max()
        .unwrap_or(0)
        .min(height);
    let mut crossings = Vec::with_capacity(edges.len());
    for y in first_row..end_row {
        crossings.clear();
        crossings.extend(
            edges
                .iter()
                .filter(|e| e.top <= y && y < e.bottom)
                .map(|e| e.x + (y - e.top) * e.dx),
        );
        crossings.sort_unstable();
        for pair in crossings.chunks_exact(2) {
            let (left, right) = (pair[0] >> XY_SHIFT, pair[1] >> XY_SHIFT);
            if left < width && right >= 0 {
                for x in left.max(0)..=right.min(width - 1) {
                    img.put_pixel(x as u32, y as u32, image::Luma([value]));
                }
            }
        }
    }
}

/// An 8-connected line from `from` to `to` as OpenCV's `LineIterator` walks it (left to
/// right, Bresenham's decision variable); pixels outside the image are skipped.
pub fn draw_line(img: &mut GrayImage, from: (i64, i64), to: (i64, i64), value: u8) {
    let (mut start, mut end) = (from, to);
    if end.0 < start.0 {
        std::mem::swap(&mut start, &mut end);
    }
    let dx = end.0 - start.0;
    let step_y = if end.1 < start.1 { -1 } else { 1 };
    let dy = (end.1 - start.1).abs();
    let steep = dy > dx;
    let (major, minor) = if steep { (dy, dx) } else { (dx, dy) };
    let mut err = major - 2 * minor;
    let (mut x, mut y) = start;
    let (width, height) = (i64::from(img.width()), i64::from(img.height()));
    for _ in 0..=major {
        if (0..width).contains(&x) && (0..height).contains(&y) {
            img.put_pixel(x as u32, y as u32, image::Luma([value]));
        }
        let minor_step = err < 0;
        err += -2 * minor + if minor_step { 2 * major } else { 0 };
        if steep {
            y += step_y;
            x += i64::from(minor_step);
        } else {
            x += 1;
            if minor_step {
                y += step_y;
            }
        }
    }
}

/// `cv2.GaussianBlur(src, (size, size), 0)` on an 8-bit image: σ from the size, the kernel in
/// OpenCV's 8-bit fixed point ([`gaussian_kernel_fixed`]), rows then columns summed exactly
/// and rounded once, `BORDER_REFLECT_101`. Like OpenCV, a one-pixel-wide (tall) image is not
/// blurred across its single column (row).
///
/// # Panics
/// If `size` is even or zero (OpenCV refuses those too).
pub fn gaussian_blur(src: &GrayImage, size: u32) -> GrayImage {
    assert!(size % 2 == 1, "Gaussian kernel sizes are odd");
    let (width, height) = (src.width() as usize, src.height() as usize);
    if width == 0 || height == 0 {
        return src.clone();
    }
    let kernel = gaussian_kernel_fixed(size as usize);
    let one = [1u32 << 8];
    let kernel_x: &[u32] = if width == 1 { &one } else { &kernel };
    let kernel_y: &[u32] = if height == 1 { &one } else { &kernel };

    // Rows: 8.8 fixed point, exact (at most 255 · 256), one tap at a time over the row padded
    // by its reflection, which the compiler vectorises.
    let radius_x = kernel_x.len() / 2;
    let columns: Vec<usize> = (0..width + 2 * radius_x)
        .map(|i| reflect_101(i as i64 - radius_x as i64, width))
        .collect();
    let mut rows = vec![0u32; width * height];
    let mut padded = vec![0u32; columns.len()];
    for (src_row, dst_row) in src.as_raw().chunks(width).zip(rows.chunks_mut(width)) {
        for (p, &c) in padded.iter_mut().zip(&columns) {
            *p = u32::from(src_row[c]);
        }
        for (tap, &k) in kernel_x.iter().enumerate() {
            for (d, &v) in dst_row.iter_mut().zip(&padded[tap..]) {
                *d += k * v;
            }
        }
    }
    // Columns: 16.16 fixed point, exact, rounded to the nearest integer.
    let radius_y = kernel_y.len() / 2;
    let mut out = vec![0u8; width * height];
    let mut sums = vec![0u32; width];
    for (y, dst_row) in out.chunks_mut(width).enumerate() {
        sums.fill(0);
        for (i, &k) in kernel_y.iter().enumerate() {
            let row = reflect_101(y as i64 + i as i64 - radius_y as i64, height);
            for (s, &v) in sums.iter_mut().zip(&rows[row * width..(row + 1) * width]) {
                *s += k * v;
            }
        }
        for (d, &s) in dst_row.iter_mut().zip(&sums) {
            *d = ((s + (1 << 15)) >> 16).min(255) as u8;
        }
    }
    gray(width, height, out)
}

/// OpenCV's `BORDER_REFLECT_101` (`gfedcb|abcdefgh|gfedcba`), reflecting as often as needed.
fn reflect_101(mut p: i64, len: usize) -> usize {
    let len = len as i64;
    if len == 1 {
        return 0;
    }
    while !(0..len).contains(&p) {
        p = if p < 0 { -p } else { 2 * (len - 1) - p };
    }
    p as usize
}

/// The Gaussian kernel OpenCV's 8-bit `GaussianBlur` uses for `size` and σ = 0, in 8 fractional
/// bits (summing to 256): the binomial kernels for sizes up to 9, otherwise σ = 0.15·size +
/// 0.35 (one fused multiply-add) and `exp(-x²/(2σ²))` normalised; then quantised from the ends
/// inwards with the rounding error carried along, the centre taking what is left.
pub fn gaussian_kernel_fixed(size: usize) -> Vec<u32> {
    assert!(size % 2 == 1, "Gaussian kernel sizes are odd");
    let binomial: Option<&[f64]> = match size {
        1 => Some(&[1.0]),
        3 => Some(&[0.25, 0.5, 0.25]),
        5 => Some(&[0.0625, 0.25, 0.375, 0.25, 0.0625]),
        7 => Some(&[
            0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125,
        ]),
        9 => Some(&[
            4.0 / 256.0,
            13.0 / 256.0,
            30.0 / 256.0,
            51.0 / 256.0,
            60.0 / 256.0,
            51.0 / 256.0,
            30.0 / 256.0,
            13.0 / 256.0,
            4.0 / 256.0,
        ]),
        _ => None,
    };
    let half = size / 2;
    let weights: Vec<f64> = match binomial {
        Some(weights) => weights.to_vec(),
        None => {
            let sigma = (size as f64).mul_add(0.15, 0.35);
            let scale = -0.125 / (sigma * sigma);
            // x runs over twice the distance from the centre, as in OpenCV.
            let tail: Vec<f64> = (0..half)
                .map(|i| {
                    let x = 2 * i as i64 + 1 - size as i64;
                    ((x * x) as f64 * scale).exp()
                })
                .collect();
            let sum = tail.iter().sum::<f64>() * 2.0 + 1.0;
            let norm = 1.0 / sum;
            let mut weights: Vec<f64> = tail.iter().map(|t| t * norm).collect();
            weights.push(norm);
            weights.extend(tail.iter().rev().map(|t| t * norm));
            weights
        }
    };
    let mut fixed = vec![0u32; size];
    let mut carried = 0.0f64;
    let mut total = 0i64;
    for i in 0..half {
        let adjusted = weights[i] * 256.0 + carried;
        let rounded = adjusted.round_ties_even();
        carried = adjusted - rounded;
        fixed[i] = rounded as u32;
        fixed[size - 1 - i] = rounded as u32;
        total += rounded as i64;
    }
    fixed[half] = (256 - 2 * total) as u32;
    fixed
}

fn gray(width: usize, height: usize, pixels: Vec<u8>) -> GrayImage {
    GrayImage::from_raw(width as u32, height as u32, pixels)
        .expect("the buffer holds width × height pixels")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(img: &GrayImage) -> String {
        img.as_raw()
            .chunks(img.width() as usize)
            .map(|row| {
                row.iter()
                    .map(|&v| if v != 0 { '#' } else { '.' })
                    .collect()
            })
            .collect::<Vec<String>>()
            .join("\n")
    }

    fn tidy(art: &str) -> String {
        art.split_whitespace().collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn the_hull_keeps_corners_only() {
        // (x, y): a 4×4 square's corners with points on its edges and inside.
        let mut points = [(0, 0), (2, 0), (4, 0), (0, 2), (2, 2), (0, 4), (4, 4)];
        let mut hull = convex_hull(&mut points);
        hull.sort_unstable();
        assert_eq!(hull, vec![(0, 0), (0, 4), (4, 0), (4, 4)]);
        // Fewer than three distinct points are their own hull.
        assert_eq!(
            convex_hull(&mut [(1, 1), (3, 2), (1, 1)]),
            vec![(1, 1), (3, 2)]
        );
    }

    #[test]
    fn a_polygon_is_filled_as_opencv_fills_it() {
        // cv2.fillPoly of this triangle: the edges' lines plus each row between the crossings
        // rounded to the nearest column.
        let mut img = GrayImage::new(7, 7);
        fill_poly(&mut img, &[(3, 0), (0, 6), (6, 6)], 255);
        assert_eq!(
            draw(&img),
            tidy(
                "...#...
                 ..###..
                 ..###..
                 .#####.
                 .#####.
                 #######
                 #######"
            )
        );
    }

    #[test]
    fn the_fixed_point_kernels_sum_to_one() {
        for size in (1..=61).step_by(2) {
            let kernel = gaussian_kernel_fixed(size);
            assert_eq!(kernel.iter().sum::<u32>(), 256, "size {size}");
            assert!(kernel.iter().eq(kernel.iter().rev()), "size {size}");
        }
        assert_eq!(gaussian_kernel_fixed(3), vec![64, 128, 64]);
    }
}
