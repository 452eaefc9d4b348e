//! Operations on binary masks (one `bool` per pixel, row-major, sized by a [`Grid`]), all
//! linear in the number of pixels: connected-component labelling, the filters built on it
//! (small components, holes, a flood from the border, regions holding a seed), and adapters to
//! the OpenCV-exact dilation, blur and convex hulls of [`super::cv`] (one implementation of each
//! operation, shared with the parser-based person mask). The garment mask and a model's drawn
//! mask both use them.

use image::GrayImage;

use super::cv;

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

/// Dilation by a square of side `2 * radius + 1`, pixels outside the image left out: OpenCV's
/// ([`cv::dilate`]) on a 0/1 mask.
pub fn dilate(mask: &[bool], grid: Grid, radius: usize) -> Vec<bool> {
    let size = u32::try_from(2 * radius + 1).unwrap_or(u32::MAX);
    from_gray(&cv::dilate(&to_gray(mask, grid), size, 1))
}

/// OpenCV's Gaussian blur of the mask drawn in 0/255, with an odd `kernel_size` and σ from it
/// ([`cv::gaussian_blur`]), kept where it reaches `threshold`: the blur-and-threshold step of
/// the person mask a model draws. A low threshold grows the mask and closes narrow gaps; a high
/// one drops specks and thin parts.
pub fn blur_threshold(mask: &[bool], grid: Grid, kernel_size: u32, threshold: u8) -> Vec<bool> {
    let blurred = cv::gaussian_blur(&to_gray(mask, grid), kernel_size);
    blurred.as_raw().iter().map(|&v| v >= threshold).collect()
}

/// Replaces each outer 8-connected region of `mask` by its filled convex hull, as OpenCV's
/// `findContours` + `convexHull` + `fillPoly` draw it ([`cv::fill_external_hulls`]). Regions
/// inside another's hole fall within that one's hull.
pub fn fill_component_hulls(mask: &[bool], grid: Grid) -> Vec<bool> {
    from_gray(&cv::fill_external_hulls(&to_gray(mask, grid)))
}

/// The mask as an 8-bit image, 255 where set.
fn to_gray(mask: &[bool], grid: Grid) -> GrayImage {
    let pixels = mask.iter().map(|&m| 255 * u8::from(m)).collect();
    GrayImage::from_raw(grid.width as u32, grid.height as u32, pixels)
        .expect("the mask holds width × height pixels")
}

fn from_gray(image: &GrayImage) -> Vec<bool> {
    image.as_raw().iter().map(|&v| v != 0).collect()
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
    fn a_half_threshold_drops_specks() {
        // Kernel 3 is OpenCV's [1 2 1]/4 both ways: the speck reaches 64 of 255, the block's
        // corners 143; the reflected border (row −1 is row 1) lifts (0, 2) to 128.
        let (mask, grid) = parse(BLOCK_AND_SPECK);
        assert_eq!(
            draw(&blur_threshold(&mask, grid, 3, 128), grid),
            tidy(
                "..#....
                 .###...
                 ####...
                 .###...
                 .......
                 .......
                 ......."
            )
        );
    }

    #[test]
    fn a_low_threshold_grows_the_mask() {
        // At 25 of 255 every pixel within one of a set pixel is reached (at least 32), and the
        // gap between block and speck closes.
        let (mask, grid) = parse(BLOCK_AND_SPECK);
        assert_eq!(
            draw(&blur_threshold(&mask, grid, 3, 25), grid),
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
        // Kernel 1 changes nothing.
        assert_eq!(blur_threshold(&mask, grid, 1, 128), mask);
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
