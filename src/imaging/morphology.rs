//! Operations on binary masks (one `bool` per pixel, row-major, sized by a [`Grid`]), all
//! linear in the number of pixels: connected-component labelling, the filters built on it
//! (small components, holes, a flood from the border, regions holding a seed), dilation, a
//! blur-and-threshold, convex hulls and polygon filling. The garment mask and a model's drawn
//! mask both use them.

/// The size of a mask: `width × height` pixels, row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub width: usize,
    pub height: usize,
}

impl Grid {
    pub fn index(self, x: usize, y: usize) -> usize {
        y * self.width + x
    }

    /// The row nearest to `y`, clamped into the image.
    pub fn row_at(self, y: f32) -> usize {
        y.round().clamp(0.0, (self.height - 1) as f32) as usize
    }
}

/// First and last set column of each row.
pub fn row_spans(mask: &[bool], grid: Grid) -> Vec<Option<(usize, usize)>> {
    mask.chunks(grid.width.max(1))
        .map(|row| {
            let first = row.iter().position(|&m| m)?;
            let last = row.iter().rposition(|&m| m)?;
            Some((first, last))
        })
        .collect()
}

/// Which neighbours join pixels into one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connectivity {
    /// Left, right, up and down.
    Four,
    /// Also the diagonals.
    Eight,
}

/// A connected region's pixel count and bounding box (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub area: usize,
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

/// Labels the connected regions of `mask`: one label per pixel (1, 2, … in raster order of
/// each region's first pixel; 0 outside) and the regions in label order. Works on horizontal
/// runs joined through a union-find.
pub fn label_components(
    mask: &[bool],
    grid: Grid,
    connectivity: Connectivity,
) -> (Vec<u32>, Vec<Region>) {
    let (width, height) = (grid.width, grid.height);
    // Runs as (row, first column, last column); `row_starts[y]` indexes row y's first run.
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    let mut row_starts = Vec::with_capacity(height + 1);
    for (y, row) in mask.chunks(width.max(1)).enumerate().take(height) {
        row_starts.push(runs.len());
        let mut x = 0;
        while x < width {
            if row[x] {
                let first = x;
                while x + 1 < width && row[x + 1] {
                    x += 1;
                }
                runs.push((y, first, x));
            }
            x += 1;
        }
    }
    row_starts.push(runs.len());

    let mut parent: Vec<usize> = (0..runs.len()).collect();
    let reach = usize::from(connectivity == Connectivity::Eight);
    for y in 1..height {
        let (mut above, above_end) = (row_starts[y - 1], row_starts[y]);
        let (mut here, here_end) = (row_starts[y], row_starts[y + 1]);
        while above < above_end && here < here_end {
            let (_, a_first, a_last) = runs[above];
            let (_, h_first, h_last) = runs[here];
            if a_last + reach >= h_first && h_last + reach >= a_first {
                union(&mut parent, above, here);
            }
            // The run that ends first cannot touch any later run of the other row.
            if a_last <= h_last {
                above += 1;
            } else {
                here += 1;
            }
        }
    }

    // Roots are each region's first run in raster order, so numbering by root keeps that order.
    let mut region_of_root = vec![u32::MAX; runs.len()];
    let mut regions: Vec<Region> = Vec::new();
    let mut labels = vec![0u32; mask.len()];
    for (k, &(y, first, last)) in runs.iter().enumerate() {
        let root = find(&mut parent, k);
        if region_of_root[root] == u32::MAX {
            region_of_root[root] = regions.len() as u32;
            regions.push(Region {
                area: 0,
                top: y,
                bottom: y,
                left: first,
                right: last,
            });
        }
        let index = region_of_root[root];
        let region = &mut regions[index as usize];
        region.area += last - first + 1;
        region.bottom = region.bottom.max(y);
        region.left = region.left.min(first);
        region.right = region.right.max(last);
        labels[y * width + first..=y * width + last].fill(index + 1);
    }
    (labels, regions)
}

fn find(parent: &mut [usize], mut k: usize) -> usize {
    let mut root = k;
    while parent[root] != root {
        root = parent[root];
    }
    while parent[k] != root {
        let next = parent[k];
        parent[k] = root;
        k = next;
    }
    root
}

/// Joins two sets, keeping the smaller index (the earlier run) as the root.
fn union(parent: &mut [usize], a: usize, b: usize) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        let (low, high) = if ra < rb { (ra, rb) } else { (rb, ra) };
        parent[high] = low;
    }
}

/// The set pixels of `mask` whose 4-connected region touches the image border: a flood fill
/// from every border pixel. Bottom border columns inside `sealed_bottom` do not count as
/// border.
pub fn reaches_border(
    mask: &[bool],
    grid: Grid,
    sealed_bottom: Option<(usize, usize)>,
) -> Vec<bool> {
    let (width, height) = (grid.width, grid.height);
    if width == 0 || height == 0 {
        return vec![false; mask.len()];
    }
    let (labels, regions) = label_components(mask, grid, Connectivity::Four);
    let mut outside = vec![false; regions.len() + 1];
    let mut mark = |x: usize, y: usize| outside[labels[grid.index(x, y)] as usize] = true;
    for x in 0..width {
        mark(x, 0);
        if !sealed_bottom.is_some_and(|(first, last)| (first..=last).contains(&x)) {
            mark(x, height - 1);
        }
    }
    for y in 0..height {
        mark(0, y);
        mark(width - 1, y);
    }
    labels
        .iter()
        .map(|&l| l != 0 && outside[l as usize])
        .collect()
}

/// Sets the unset pixels that the image border cannot reach through unset pixels
/// (4-connected): the holes of `mask`. Bottom border columns inside `sealed_bottom` do not
/// count as border.
pub fn fill_holes(mask: &[bool], grid: Grid, sealed_bottom: Option<(usize, usize)>) -> Vec<bool> {
    let unset: Vec<bool> = mask.iter().map(|&m| !m).collect();
    let outside = reaches_border(&unset, grid, sealed_bottom);
    mask.iter().zip(&outside).map(|(&m, &o)| m || !o).collect()
}

/// Keeps the 4-connected regions of `mask` with at least `min_area` pixels.
pub fn keep_large_components(mask: &[bool], grid: Grid, min_area: usize) -> Vec<bool> {
    let (labels, regions) = label_components(mask, grid, Connectivity::Four);
    labels
        .iter()
        .map(|&l| l != 0 && regions[l as usize - 1].area >= min_area)
        .collect()
}

/// The set pixels of `mask` whose 4-connected region (within `mask`) holds a seed.
pub fn connected_to(mask: &[bool], seeds: &[bool], grid: Grid) -> Vec<bool> {
    let (labels, regions) = label_components(mask, grid, Connectivity::Four);
    let mut seeded = vec![false; regions.len() + 1];
    for (&label, &seed) in labels.iter().zip(seeds) {
        if seed {
            seeded[label as usize] = true;
        }
    }
    labels
        .iter()
        .map(|&l| l != 0 && seeded[l as usize])
        .collect()
}

/// Dilation by a square of side `2 * radius + 1`: a row pass, then a column pass done row by
/// row (each column remembers its last set row) to stay cache-friendly.
pub fn dilate(mask: &[bool], grid: Grid, radius: usize) -> Vec<bool> {
    let width = grid.width;
    if radius == 0 || mask.is_empty() {
        return mask.to_vec();
    }
    let mut rows = vec![false; mask.len()];
    for (src, dst) in mask.chunks(width).zip(rows.chunks_mut(width)) {
        dilate_line(src, dst, radius);
    }
    // Rows since the last set cell of each column, going down and then going up.
    let mut out = vec![false; mask.len()];
    let mut since = vec![usize::MAX; width];
    for (src, dst) in rows.chunks(width).zip(out.chunks_mut(width)) {
        for ((since, &set), d) in since.iter_mut().zip(src).zip(dst) {
            *since = if set { 0 } else { since.saturating_add(1) };
            *d = *since <= radius;
        }
    }
    since.fill(usize::MAX);
    for (src, dst) in rows.chunks(width).zip(out.chunks_mut(width)).rev() {
        for ((since, &set), d) in since.iter_mut().zip(src).zip(dst) {
            *since = if set { 0 } else { since.saturating_add(1) };
            *d |= *since <= radius;
        }
    }
    out
}

/// One-dimensional dilation: a cell is set when a set cell lies within `radius` of it.
fn dilate_line(src: &[bool], dst: &mut [bool], radius: usize) {
    let mut since = usize::MAX;
    for (&set, d) in src.iter().zip(dst.iter_mut()) {
        since = if set { 0 } else { since.saturating_add(1) };
        *d = since <= radius;
    }
    since = usize::MAX;
    for (&set, d) in src.iter().zip(dst.iter_mut()).rev() {
        since = if set { 0 } else { since.saturating_add(1) };
        *d |= since <= radius;
    }
}

/// A Gaussian blur of OpenCV's `kernel_size` followed by `value > threshold` (a share of
/// full scale), approximated by a box filter of the same standard deviation: a pixel is set
/// when at least `threshold` of the box around it (of the full box, also at the border) is
/// set. A low threshold grows the mask and closes narrow gaps; one half rounds corners off and
/// drops specks.
pub fn blur_threshold(mask: &[bool], grid: Grid, kernel_size: usize, threshold: f32) -> Vec<bool> {
    let (width, height) = (grid.width, grid.height);
    // OpenCV's sigma for a given kernel size, and the box with the same variance.
    let sigma = 0.3 * ((kernel_size as f32 - 1.0) * 0.5 - 1.0) + 0.8;
    let half = (sigma * 12f32.sqrt()).round() as usize / 2;
    if half == 0 || mask.is_empty() {
        return mask.to_vec();
    }
    let side = 2 * half + 1;
    let needed = (threshold * (side * side) as f32).ceil().max(1.0) as u32;

    // Horizontal window sums through per-row prefix sums.
    let mut row_sums = vec![0u32; mask.len()];
    let mut prefix = vec![0u32; width + 1];
    for (src, dst) in mask.chunks(width).zip(row_sums.chunks_mut(width)) {
        for (x, &m) in src.iter().enumerate() {
            prefix[x + 1] = prefix[x] + u32::from(m);
        }
        for (x, d) in dst.iter_mut().enumerate() {
            *d = prefix[(x + half + 1).min(width)] - prefix[x.saturating_sub(half)];
        }
    }
    // Vertical window sums, kept per column while walking down the rows.
    let mut window = vec![0u32; width];
    for y in 0..half.min(height) {
        for (w, &s) in window.iter_mut().zip(&row_sums[y * width..(y + 1) * width]) {
            *w += s;
        }
    }
    let mut out = vec![false; mask.len()];
    for y in 0..height {
        let entering = y + half;
        if entering < height {
            for (w, &s) in window
                .iter_mut()
                .zip(&row_sums[entering * width..(entering + 1) * width])
            {
                *w += s;
            }
        }
        if y > half {
            let leaving = y - half - 1;
            for (w, &s) in window
                .iter_mut()
                .zip(&row_sums[leaving * width..(leaving + 1) * width])
            {
                *w -= s;
            }
        }
        for (o, &w) in out[y * width..(y + 1) * width].iter_mut().zip(&window) {
            *o = w >= needed;
        }
    }
    out
}

/// Replaces each 8-connected region of `mask` by its filled convex hull.
pub fn fill_component_hulls(mask: &[bool], grid: Grid) -> Vec<bool> {
    let (width, height) = (grid.width, grid.height);
    let (labels, regions) = label_components(mask, grid, Connectivity::Eight);
    // Run ends, collected row by row, so each region's points arrive sorted by (y, x).
    let mut points: Vec<Vec<(i64, i64)>> = vec![Vec::new(); regions.len()];
    for y in 0..height {
        let row = &labels[y * width..(y + 1) * width];
        for x in 0..width {
            let label = row[x];
            if label == 0 {
                continue;
            }
            let run_start = x == 0 || row[x - 1] != label;
            let run_end = x + 1 == width || row[x + 1] != label;
            if run_start || run_end {
                points[label as usize - 1].push((y as i64, x as i64));
            }
        }
    }
    let mut out = vec![false; mask.len()];
    for region_points in &points {
        let hull = convex_hull(region_points);
        fill_convex_polygon(&hull, &mut out, grid);
    }
    out
}

/// Andrew's monotone chain over points already sorted by (y, x); returns the hull's corners
/// in order, without repeating the first.
pub fn convex_hull(points: &[(i64, i64)]) -> Vec<(i64, i64)> {
    if points.len() < 3 {
        return points.to_vec();
    }
    let cross = |o: (i64, i64), a: (i64, i64), b: (i64, i64)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    let mut hull: Vec<(i64, i64)> = Vec::with_capacity(points.len() + 1);
    for &p in points {
        while hull.len() >= 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0 {
            hull.pop();
        }
        hull.push(p);
    }
    let lower_len = hull.len() + 1;
    for &p in points.iter().rev().skip(1) {
        while hull.len() >= lower_len && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0 {
            hull.pop();
        }
        hull.push(p);
    }
    hull.pop();
    hull
}

/// Sets every pixel of a convex polygon (corners as (y, x)), each row filled between the
/// polygon's leftmost and rightmost crossing.
pub fn fill_convex_polygon(corners: &[(i64, i64)], out: &mut [bool], grid: Grid) {
    let Some(y_min) = corners.iter().map(|c| c.0).min() else {
        return;
    };
    let y_max = corners.iter().map(|c| c.0).max().unwrap_or(y_min);
    let rows = (y_max - y_min + 1) as usize;
    let mut bounds = vec![(i64::MAX, i64::MIN); rows];
    let mut widen = |y: i64, x_lo: i64, x_hi: i64| {
        let b = &mut bounds[(y - y_min) as usize];
        b.0 = b.0.min(x_lo);
        b.1 = b.1.max(x_hi);
    };
    for (k, &a) in corners.iter().enumerate() {
        let b = corners[(k + 1) % corners.len()];
        widen(a.0, a.1, a.1);
        if a.0 == b.0 {
            widen(a.0, a.1.min(b.1), a.1.max(b.1));
            continue;
        }
        let (from, to) = if a.0 < b.0 { (a, b) } else { (b, a) };
        let slope = (to.1 - from.1) as f64 / (to.0 - from.0) as f64;
        for y in from.0..=to.0 {
            let x = from.1 as f64 + slope * (y - from.0) as f64;
            widen(y, (x - 1e-6).ceil() as i64, (x + 1e-6).floor() as i64);
        }
    }
    for (offset, &(lo, hi)) in bounds.iter().enumerate() {
        if lo > hi {
            continue;
        }
        let y = y_min as usize + offset;
        let lo = lo.clamp(0, grid.width as i64 - 1) as usize;
        let hi = hi.clamp(0, grid.width as i64 - 1) as usize;
        if y < grid.height {
            out[y * grid.width + lo..=y * grid.width + hi].fill(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mask drawn as rows of `#` (set) and `.` (unset), one row per whitespace-separated word.
    fn parse(art: &str) -> (Vec<bool>, Grid) {
        let rows: Vec<&str> = art.split_whitespace().collect();
        let width = rows.first().map_or(0, |r| r.len());
        assert!(rows.iter().all(|r| r.len() == width), "ragged drawing");
        let mask = rows
            .iter()
            .flat_map(|r| r.chars().map(|c| c == '#'))
            .collect();
        let grid = Grid {
            width,
            height: rows.len(),
        };
        (mask, grid)
    }

    /// A mask drawn back the same way, one row per line.
    fn draw(mask: &[bool], grid: Grid) -> String {
        mask.chunks(grid.width)
            .map(|row| row.iter().map(|&m| if m { '#' } else { '.' }).collect())
            .collect::<Vec<String>>()
            .join("\n")
    }

    /// An expected drawing in the form [`draw`] answers.
    fn tidy(art: &str) -> String {
        art.split_whitespace().collect::<Vec<_>>().join("\n")
    }

    /// Labels drawn as digits, `.` for 0.
    fn draw_labels(labels: &[u32], grid: Grid) -> String {
        labels
            .chunks(grid.width)
            .map(|row| {
                row.iter()
                    .map(|&l| char::from_digit(l, 10).map_or('.', |c| if l == 0 { '.' } else { c }))
                    .collect()
            })
            .collect::<Vec<String>>()
            .join("\n")
    }

    const SPECKS: &str = "
        ##....#
        #..#..#
        ..#....
        .......
        .###...
        .#.#...
        .###..#";

    #[test]
    fn labels_follow_raster_order_and_connectivity() {
        let (mask, grid) = parse(SPECKS);
        let (labels, regions) = label_components(&mask, grid, Connectivity::Four);
        assert_eq!(
            draw_labels(&labels, grid),
            tidy(
                "11....2
                 1..3..2
                 ..4....
                 .......
                 .555...
                 .5.5...
                 .555..6"
            )
        );
        assert_eq!(regions.len(), 6);
        // The ring: eight pixels in rows 4..=6 and columns 1..=3.
        assert_eq!(
            regions[4],
            Region {
                area: 8,
                top: 4,
                bottom: 6,
                left: 1,
                right: 3
            }
        );
        // Diagonal neighbours join when the diagonals count.
        let (labels, regions) = label_components(&mask, grid, Connectivity::Eight);
        assert_eq!(
            draw_labels(&labels, grid),
            tidy(
                "11....2
                 1..3..2
                 ..3....
                 .......
                 .444...
                 .4.4...
                 .444..5"
            )
        );
        assert_eq!(
            regions[2],
            Region {
                area: 2,
                top: 1,
                bottom: 2,
                left: 2,
                right: 3
            }
        );
    }

    #[test]
    fn small_components_go() {
        // Areas, 4-connected: 1 at (0, 0), 2 on the right, 1 and 1 on the diagonal, 3, 3, 2.
        let (mask, grid) = parse(
            "#.....#
             ......#
             .#.....
             ..#....
             ....###
             .......
             ###.##.",
        );
        assert_eq!(
            draw(&keep_large_components(&mask, grid, 3), grid),
            tidy(
                ".......
                 .......
                 .......
                 .......
                 ....###
                 .......
                 ###...."
            )
        );
        assert_eq!(
            draw(&keep_large_components(&mask, grid, 2), grid),
            tidy(
                "......#
                 ......#
                 .......
                 .......
                 ....###
                 .......
                 ###.##."
            )
        );
        assert_eq!(keep_large_components(&mask, grid, 1), mask);
    }

    #[test]
    fn the_flood_from_the_border_keeps_what_touches_it() {
        let (mask, grid) = parse(
            "##.....
             #......
             .....#.
             ....##.
             .......
             ...#...
             ...#...",
        );
        assert_eq!(
            draw(&reaches_border(&mask, grid, None), grid),
            tidy(
                "##.....
                 #......
                 .......
                 .......
                 .......
                 ...#...
                 ...#..."
            )
        );
        // With the bottom edge sealed under columns 2..=4, the bar no longer touches a border.
        assert_eq!(
            draw(&reaches_border(&mask, grid, Some((2, 4))), grid),
            tidy(
                "##.....
                 #......
                 .......
                 .......
                 .......
                 .......
                 ......."
            )
        );
        assert!(reaches_border(
            &[],
            Grid {
                width: 0,
                height: 0
            },
            None
        )
        .is_empty());
    }

    #[test]
    fn holes_are_filled_through_four_connected_walls_only() {
        // A ring around (2, 2), and a diamond around (5, 4) whose walls touch only diagonally:
        // the flood of unset pixels moves 4-connected, so both centres are holes.
        let (mask, grid) = parse(
            ".......
             .###...
             .#.#...
             .###.#.
             ....#.#
             .....#.
             .......",
        );
        assert_eq!(
            draw(&fill_holes(&mask, grid, None), grid),
            tidy(
                ".......
                 .###...
                 .###...
                 .###.#.
                 ....###
                 .....#.
                 ......."
            )
        );
    }

    #[test]
    fn a_sealed_bottom_closes_a_figure_cut_by_the_edge() {
        let (mask, grid) = parse(
            ".......
             .......
             .#####.
             .#...#.
             .#...#.
             .#...#.
             .#...#.",
        );
        // Open at the bottom: nothing is a hole.
        assert_eq!(fill_holes(&mask, grid, None), mask);
        assert_eq!(
            draw(&fill_holes(&mask, grid, Some((1, 5))), grid),
            tidy(
                ".......
                 .......
                 .#####.
                 .#####.
                 .#####.
                 .#####.
                 .#####."
            )
        );
    }

    #[test]
    fn seeds_pick_their_components() {
        let (mask, grid) = parse(
            "##...##
             .#....#
             .......
             ..###..
             .......
             #......
             #......",
        );
        // One seed inside the top-left component, one on an unset pixel (ignored).
        let (seeds, _) = parse(
            ".......
             .#.....
             .......
             .......
             .......
             .......
             ...#...",
        );
        assert_eq!(
            draw(&connected_to(&mask, &seeds, grid), grid),
            tidy(
                "##.....
                 .#.....
                 .......
                 .......
                 .......
                 .......
                 ......."
            )
        );
    }

    #[test]
    fn dilation_grows_points_into_squares_clipped_at_the_border() {
        let (mask, grid) = parse(
            ".......
             .#.....
             .......
             .......
             .....#.
             .......
             .......",
        );
        assert_eq!(
            draw(&dilate(&mask, grid, 1), grid),
            tidy(
                "###....
                 ###....
                 ###....
                 ....###
                 ....###
                 ....###
                 ......."
            )
        );
        assert_eq!(
            draw(&dilate(&mask, grid, 2), grid),
            tidy(
                "####...
                 ####...
                 #######
                 #######
                 ...####
                 ...####
                 ...####"
            )
        );
        assert_eq!(dilate(&mask, grid, 0), mask);
    }

    #[test]
    fn dilation_of_a_point_is_a_square() {
        let grid = Grid {
            width: 11,
            height: 9,
        };
        let mut point = vec![false; grid.width * grid.height];
        point[grid.index(5, 4)] = true;
        let grown = dilate(&point, grid, 2);
        for y in 0..grid.height {
            for x in 0..grid.width {
                let inside = x.abs_diff(5) <= 2 && y.abs_diff(4) <= 2;
                assert_eq!(grown[grid.index(x, y)], inside, "({x}, {y})");
            }
        }
    }

    const BLOCK_AND_SPECK: &str = "
        .......
        .###...
        .###...
        .###...
        .......
        .....#.
        .......";

    #[test]
    fn a_half_threshold_rounds_corners_and_drops_specks() {
        // Kernel 3: σ = 0.8, a 3×3 box; half of it is 4.5, so 5 set pixels are needed. The
        // block's corners see 4, its edges' middles 6, the pixels beside it at most 3.
        let (mask, grid) = parse(BLOCK_AND_SPECK);
        assert_eq!(
            draw(&blur_threshold(&mask, grid, 3, 0.5), grid),
            tidy(
                ".......
                 ..#....
                 .###...
                 ..#....
                 .......
                 .......
                 ......."
            )
        );
    }

    #[test]
    fn a_low_threshold_grows_the_mask() {
        // 25/255 of a 3×3 box is 0.88: one set pixel is enough, a dilation by 1.
        let (mask, grid) = parse(BLOCK_AND_SPECK);
        assert_eq!(
            draw(&blur_threshold(&mask, grid, 3, 25.0 / 255.0), grid),
            tidy(
                "#####..
                 #####..
                 #####..
                 #####..
                 #######
                 ....###
                 ....###"
            )
        );
        // Kernel 0: σ = 0.35, a box of side 1, which changes nothing.
        assert_eq!(blur_threshold(&mask, grid, 0, 0.5), mask);
    }

    #[test]
    fn the_hull_keeps_corners_only() {
        // (y, x), sorted: a 4×4 square's corners with points on its edges and inside.
        let points = [(0, 0), (0, 2), (0, 4), (2, 0), (2, 2), (4, 0), (4, 4)];
        assert_eq!(convex_hull(&points), vec![(0, 0), (4, 0), (4, 4), (0, 4)]);
        // Fewer than three points are their own hull.
        assert_eq!(convex_hull(&[(1, 1), (2, 3)]), vec![(1, 1), (2, 3)]);
    }

    #[test]
    fn a_polygon_fills_the_pixels_on_and_inside_its_edges() {
        let grid = Grid {
            width: 7,
            height: 7,
        };
        let mut out = vec![false; 49];
        // Apex (0, 3), base from (6, 0) to (6, 6): the sides move half a column per row.
        fill_convex_polygon(&[(0, 3), (6, 0), (6, 6)], &mut out, grid);
        assert_eq!(
            draw(&out, grid),
            tidy(
                "...#...
                 ...#...
                 ..###..
                 ..###..
                 .#####.
                 .#####.
                 #######"
            )
        );
    }

    #[test]
    fn each_component_becomes_its_hull() {
        // An L (its hull is the triangle under the diagonal) and a diagonal pair, which is one
        // 8-connected region whose hull is the segment itself.
        let (mask, grid) = parse(
            "#......
             #......
             #......
             ####...
             .......
             .....#.
             ......#",
        );
        assert_eq!(
            draw(&fill_component_hulls(&mask, grid), grid),
            tidy(
                "#......
                 ##.....
                 ###....
                 ####...
                 .......
                 .....#.
                 ......#"
            )
        );
    }

    #[test]
    fn the_hull_fills_the_gap_between_arm_and_torso() {
        // Two bars joined at the top: the gap between them is inside their convex hull.
        let grid = Grid {
            width: 40,
            height: 40,
        };
        let mut mask = vec![false; grid.width * grid.height];
        for y in 5..35 {
            for x in (5..10).chain(30..35) {
                mask[grid.index(x, y)] = true;
            }
        }
        for x in 5..35 {
            mask[grid.index(x, 5)] = true;
        }
        let hull = fill_component_hulls(&mask, grid);
        assert!(hull[grid.index(20, 20)]);
        assert!(!hull[grid.index(2, 20)] && !hull[grid.index(20, 37)]);
    }

    #[test]
    fn row_spans_give_each_rows_ends() {
        let (mask, grid) = parse(
            "..#.#..
             .......
             #.....#",
        );
        assert_eq!(
            row_spans(&mask, grid),
            vec![Some((2, 4)), None, Some((0, 6))]
        );
        assert_eq!(grid.row_at(-3.0), 0);
        assert_eq!(grid.row_at(1.4), 1);
        assert_eq!(grid.row_at(9.0), 2);
    }
}
