//! Automatic repaint masks for try-on requests that come without a mask.
//!
//! CatVTON's `AutoMasker` (`model/cloth_masker.py`) parses the person with DensePose and two
//! SCHP networks and then combines the parts. Those networks are not available here, so
//! [`auto_mask`] replaces the parse with a colour-and-layout heuristic and keeps the
//! reference's combination step.
//!
//! The parse (one `Part` per pixel):
//!
//! 1. Foreground: pixels far (in YCbCr, chroma weighted up) from the backdrop, which is the
//!    median of the image border; the threshold follows the border's noise. The largest
//!    connected region is the person; its holes are filled, with the bottom edge sealed where
//!    the person is cut by it (pale trousers between hands).
//! 2. Head: the topmost sizeable skin region (YCbCr skin test) is the face; the neck narrows
//!    it, which gives the chin. Crown to chin is the head height, the unit of the layout.
//!    Without a face, the head is the top sixth of the figure and is treated as hair.
//! 3. Garments: colour histograms of the chest (0.7–1.6 heads below the chin) and of the
//!    thighs (about four heads below the crown, or the figure's lowest rows). The row that
//!    best splits the torso into upper-like rows above and lower-like rows below is the
//!    garment boundary; without a clear split it is 3.2 heads below the crown. Below it,
//!    upper-garment colours beside the thighs that connect to the top are sleeves; just above
//!    it, clear lower-garment colours are a high waist.
//! 4. Hair is the non-skin head, grown downwards through connected hair-coloured pixels
//!    (long hair). Skin below the chin is legs when its region starts below the boundary and
//!    is tall or reaches the figure's bottom, else upper body (neck, arms); the lowest 0.65
//!    heads of that on each side of the face are hands. Backdrop below the boundary between
//!    the thighs' columns becomes lower garment (a stand-in for the reference's body-shape
//!    parts when a pale garment vanishes into a pale backdrop). A figure that ends inside the
//!    image gets its lowest 0.45 heads marked as feet.
//!
//! The combination, as in the reference (`r` is half the kernel `max(w, h) / 250`, made odd):
//! the category's parts are dilated (the reference does this twice at a quarter of the
//! resolution: radius `8 r` here), each outer connected region is replaced by its convex hull,
//! the weakly protected parts (face, hair, hands, feet and, for `Upper`/`Lower`, the other
//! garment and its limbs) are cut out, the reference's Gaussian blur (kernel `max(w, h) / 25`,
//! made odd) thresholded at 25 rounds the result, the category's garment is added back, face
//! and hands are cut out, and a final dilation by `r` follows. At 256 px `r` is 0; at 1024 px
//! it is 2.
//!
//! The backdrop estimate and the binary-mask operations (labelling, hole filling) are the ones
//! the garment mask uses too, in [`crate::imaging::backdrop`] and
//! [`crate::imaging::morphology`]; dilation, blur and hulls are OpenCV's, bit for bit
//! ([`crate::imaging::cv`]), shared with the parser-based mask
//! ([`crate::models::automasker::combine`]); the person parse and its colour model stay here.
//!
//! Every step is linear in the number of pixels. The parse is rough and fails where colour
//! does: a top and trousers of similar colour (the boundary lands off the waist or falls back
//! to the layout), garments of skin or backdrop colour, busy backdrops, hands away from the
//! ends of the arms, and faces turned away.

use image::{GrayImage, RgbImage};

use crate::imaging::backdrop::Backdrop;
use crate::imaging::morphology::{
    blur_threshold, connected_to, dilate, fill_component_hulls, fill_holes, label_components,
    row_spans, Connectivity, Grid,
};
use crate::models::automasker::combine::{blur_kernel_size, dilation_kernel_size};

/// Which garment a request replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// Tops: torso, neck and arms are repainted; legs and lower garments are kept.
    Upper,
    /// Trousers and skirts: the lower garment and legs are repainted; arms and tops are kept.
    Lower,
    /// Dresses and full outfits: both garments and all limbs except hands and feet.
    Overall,
}

/// The repaint mask for `person` and `category`: white (255) is repainted, black is kept.
/// The mask has the person image's size; an image without a distinct figure gets an all-black
/// mask.
pub fn auto_mask(person: &RgbImage, category: Category) -> GrayImage {
    let (width, height) = person.dimensions();
    let parse = parse_person(person);
    let repaint = compose_mask(&parse, category);
    let pixels = repaint.iter().map(|&m| if m { 255 } else { 0 }).collect();
    GrayImage::from_raw(width, height, pixels).unwrap_or_else(|| GrayImage::new(width, height))
}

/// The reference's threshold on its blurred 0/255 mask.
const BLUR_THRESHOLD: u8 = 25;

/// What a pixel of the person image shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Background,
    Face,
    Hair,
    Hand,
    Feet,
    /// Neck, chest and arm skin.
    UpperSkin,
    /// Leg skin.
    LowerSkin,
    UpperCloth,
    LowerCloth,
}

/// The heuristic parse of a person image: one [`Part`] per pixel, row-major.
struct PersonParse {
    width: usize,
    height: usize,
    parts: Vec<Part>,
}

impl Part {
    /// Parts whose pixels are repainted for `category` (the reference's dense parts).
    fn is_repainted(self, category: Category) -> bool {
        match category {
            Category::Upper => matches!(self, Part::UpperCloth | Part::UpperSkin),
            Category::Lower => matches!(self, Part::LowerCloth | Part::LowerSkin),
            Category::Overall => matches!(
                self,
                Part::UpperCloth | Part::UpperSkin | Part::LowerCloth | Part::LowerSkin
            ),
        }
    }

    /// The garment itself, which is repainted even where the hull step removed it.
    fn is_garment(self, category: Category) -> bool {
        match category {
            Category::Upper => self == Part::UpperCloth,
            Category::Lower => self == Part::LowerCloth,
            Category::Overall => matches!(self, Part::UpperCloth | Part::LowerCloth),
        }
    }

    /// Parts cut out of the hull: hair, feet, the other garment and its limbs.
    fn is_weakly_protected(self, category: Category) -> bool {
        if matches!(self, Part::Face | Part::Hair | Part::Hand | Part::Feet) {
            return true;
        }
        match category {
            Category::Upper => matches!(self, Part::LowerCloth | Part::LowerSkin),
            Category::Lower => matches!(self, Part::UpperCloth | Part::UpperSkin),
            Category::Overall => false,
        }
    }

    /// Parts cut out at the very end, so that only the final dilation reaches into them.
    fn is_strongly_protected(self) -> bool {
        matches!(self, Part::Face | Part::Hand)
    }
}

/// Combines a parse into a repaint mask the way the reference's `cloth_agnostic_mask` does.
fn compose_mask(parse: &PersonParse, category: Category) -> Vec<bool> {
    let (width, height) = (parse.width, parse.height);
    let grid = Grid { width, height };
    let parts = &parse.parts;
    let radius = dilation_kernel_size(width, height) as usize / 2;

    let repainted: Vec<bool> = parts.iter().map(|p| p.is_repainted(category)).collect();
    // The reference dilates its dense parts twice at a quarter of the resolution, which is
    // a radius of 4 × 2 × r at full resolution.
    let dense = dilate(&repainted, grid, 8 * radius);
    // The reference takes the hull of (foreground − weakly protected) ∪ dense parts; in this
    // parse every unprotected foreground pixel is a repainted part, so that union is `dense`.
    let hull = fill_component_hulls(&dense, grid);
    let unprotected: Vec<bool> = hull
        .iter()
        .zip(parts)
        .map(|(&h, p)| h && !p.is_weakly_protected(category))
        .collect();
    let kernel_size = blur_kernel_size(width, height);
    let smoothed = blur_threshold(&unprotected, grid, kernel_size, BLUR_THRESHOLD);
    let kept: Vec<bool> = smoothed
        .iter()
        .zip(parts)
        .map(|(&m, p)| (m || p.is_garment(category)) && !p.is_strongly_protected())
        .collect();
    dilate(&kept, grid, radius)
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// The body's layout, measured in head heights (crown to chin).
struct Layout {
    /// First and last foreground rows.
    top: usize,
    bottom: usize,
    /// Last row of the face (or of the assumed head).
    chin: usize,
    head_height: f32,
    /// Column that splits the body into its left and right sides.
    centre_x: f32,
}

impl Layout {
    /// Row `heads` head heights below `from`, clamped into the image.
    fn row(&self, grid: Grid, from: usize, heads: f32) -> usize {
        grid.row_at(from as f32 + heads * self.head_height)
    }
}

/// The garments' colour models, the rows they were sampled from, and the row where the upper
/// garment gives way to the lower one.
struct Garments {
    upper: Option<ColourHistogram>,
    lower: Option<ColourHistogram>,
    thigh_rows: (usize, usize),
    boundary: usize,
}

impl Garments {
    /// Both models, when both garments could be sampled.
    fn both(&self) -> Option<(&ColourHistogram, &ColourHistogram)> {
        self.upper.as_ref().zip(self.lower.as_ref())
    }

    /// Whether `bin` is at least `factor` times likelier under the lower garment's model.
    fn favours_lower(&self, bin: u16, factor: f32) -> bool {
        self.both()
            .is_some_and(|(upper, lower)| lower.probability(bin) > factor * upper.probability(bin))
    }

    fn favours_upper(&self, bin: u16, factor: f32) -> bool {
        self.both()
            .is_some_and(|(upper, lower)| upper.probability(bin) > factor * lower.probability(bin))
    }
}

/// The heuristic parse of `person` (see the module documentation).
fn parse_person(person: &RgbImage) -> PersonParse {
    let width = person.width() as usize;
    let height = person.height() as usize;
    let mut parts = vec![Part::Background; width * height];
    let rgb: Vec<[u8; 3]> = person.pixels().map(|p| p.0).collect();
    if rgb.len() != width * height || rgb.is_empty() {
        return PersonParse {
            width,
            height,
            parts,
        };
    }
    let grid = Grid { width, height };

    let tests = colour_tests(&rgb, grid);
    let foreground = segment_foreground(&tests.far_from_backdrop, grid);
    let spans = row_spans(&foreground, grid);
    let Some(top) = spans.iter().position(Option::is_some) else {
        return PersonParse {
            width,
            height,
            parts,
        };
    };
    let bottom = spans.iter().rposition(Option::is_some).unwrap_or(top);
    let skin: Vec<bool> = tests
        .skin
        .iter()
        .zip(&foreground)
        .map(|(&s, &f)| s && f)
        .collect();
    let image = Pixels {
        grid,
        bins: &tests.bins,
        foreground: &foreground,
        skin: &skin,
        spans: &spans,
    };

    let face = find_face(&skin, grid, top, bottom);
    let layout = match &face {
        Some(face) => Layout {
            top,
            bottom,
            chin: face.chin,
            head_height: (face.chin - top + 1) as f32,
            centre_x: face.centre_x,
        },
        None => {
            let head_height = ((bottom - top + 1) as f32 / 6.0).max(1.0);
            Layout {
                top,
                bottom,
                chin: grid.row_at(top as f32 + head_height - 1.0),
                head_height,
                centre_x: mean_column(&foreground, grid),
            }
        }
    };

    label_head(&mut parts, &image, &layout, face.as_ref());
    let garments = sample_garments(&image, &layout);
    let long_hair = match face {
        Some(_) => long_hair(&parts, &image, &layout, garments.upper.as_ref()),
        None => vec![false; width * height],
    };
    let thighs = thigh_columns(&image, &layout, &garments);
    label_garments(&mut parts, &image, &layout, &garments, &long_hair, thighs);
    label_skin_below_chin(&mut parts, &skin, grid, &layout, garments.boundary);
    fill_lower_body(&mut parts, grid, &layout, garments.boundary, thighs);

    // Shoes or feet of a figure that ends inside the image.
    if bottom + 2 < height {
        let first_foot_row = layout.row(grid, bottom, -0.45).max(layout.chin + 1);
        for y in first_foot_row..=bottom {
            for x in 0..width {
                let i = grid.index(x, y);
                if foreground[i] {
                    parts[i] = Part::Feet;
                }
            }
        }
    }

    PersonParse {
        width,
        height,
        parts,
    }
}

/// The head down to the chin: face spans are face, the rest is hair (or a hat).
fn label_head(parts: &mut [Part], image: &Pixels, layout: &Layout, face: Option<&Face>) {
    let grid = image.grid;
    for y in layout.top..=layout.chin {
        for x in 0..grid.width {
            let i = grid.index(x, y);
            if image.foreground[i] {
                parts[i] = Part::Hair;
            }
        }
    }
    for &(y, left, right) in face.map_or(&[][..], |f| &f.spans[..]) {
        for x in left..=right {
            let i = grid.index(x, y);
            if image.foreground[i] {
                parts[i] = Part::Face;
            }
        }
    }
}

/// Samples the chest and the thighs, and splits the torso between the two garments.
fn sample_garments(image: &Pixels, layout: &Layout) -> Garments {
    let grid = image.grid;
    let (top, bottom, chin) = (layout.top, layout.bottom, layout.chin);
    let upper = sample_histogram(
        image,
        layout.row(grid, chin, 0.7),
        layout.row(grid, chin, 1.6),
    );
    // The thighs: just below the crotch (about four heads down), or the lowest rows of a
    // figure that the image cuts off higher up.
    let hd = layout.head_height;
    let thighs = (
        (top as f32 + 3.5 * hd)
            .min(bottom as f32 - 0.35 * hd)
            .max(chin as f32 + 2.2 * hd),
        (top as f32 + 4.4 * hd).min(bottom as f32),
    );
    let thigh_rows = (grid.row_at(thighs.0), grid.row_at(thighs.1));
    let lower = if thighs.1 - thighs.0 >= 0.15 * hd {
        sample_histogram(image, thigh_rows.0, thigh_rows.1)
    } else {
        None
    };
    // Where colour cannot tell, the waist is about 3.2 heads below the crown.
    let default_boundary = layout.row(grid, top, 3.2);
    let search = (
        layout.row(grid, chin, 1.0),
        layout.row(grid, top, 4.3).min(bottom),
    );
    let boundary = match upper.as_ref().zip(lower.as_ref()) {
        Some((u, l)) => split_row(image, u, l, search.0, search.1).unwrap_or(default_boundary),
        None => default_boundary,
    };
    Garments {
        upper,
        lower,
        thigh_rows,
        boundary,
    }
}

/// Long hair: non-skin pixels below the chin, down to 2.5 heads, whose colour is much likelier
/// under the head's hair than under the upper garment, and that connect to the head's hair.
fn long_hair(
    parts: &[Part],
    image: &Pixels,
    layout: &Layout,
    upper: Option<&ColourHistogram>,
) -> Vec<bool> {
    let grid = image.grid;
    let head_hair: Vec<bool> = parts.iter().map(|&p| p == Part::Hair).collect();
    let hair_pixels = (0..parts.len()).filter(|&i| head_hair[i] && !image.skin[i]);
    let hair = ColourHistogram::from_bins(hair_pixels.map(|i| image.bins[i]), 8);
    let (Some(hair), Some(upper)) = (hair, upper) else {
        return vec![false; parts.len()];
    };
    let mut candidates = head_hair.clone();
    for y in layout.chin + 1..=layout.row(grid, layout.chin, 2.5) {
        for x in 0..grid.width {
            let i = grid.index(x, y);
            let bin = image.bins[i];
            candidates[i] = image.foreground[i]
                && !image.skin[i]
                && hair.probability(bin) > 3.0 * upper.probability(bin);
        }
    }
    let mut hair = connected_to(&candidates, &head_hair, grid);
    // Only what lies below the chin is new.
    hair[..grid.index(0, layout.chin + 1).min(parts.len())].fill(false);
    hair
}

/// Labels the non-skin foreground below the chin: long hair, then upper garment above the
/// boundary and lower garment below it, except for clear colour evidence near the boundary
/// (a high waist) or sleeves hanging beside the thighs.
fn label_garments(
    parts: &mut [Part],
    image: &Pixels,
    layout: &Layout,
    garments: &Garments,
    long_hair: &[bool],
    thighs: Option<(usize, usize)>,
) {
    let grid = image.grid;
    let boundary = garments.boundary;
    let sleeves = match thighs {
        Some(thighs) => sleeves(image, layout, garments, long_hair, thighs),
        None => vec![false; image.bins.len()],
    };
    let high_waist_from = boundary as f32 - 0.3 * layout.head_height;
    for y in layout.chin + 1..=layout.bottom {
        for x in 0..grid.width {
            let i = grid.index(x, y);
            if !image.foreground[i] || image.skin[i] {
                continue;
            }
            parts[i] = if long_hair[i] {
                Part::Hair
            } else if y < boundary {
                let high_waist = y as f32 >= high_waist_from;
                if high_waist && garments.favours_lower(image.bins[i], 2.0) {
                    Part::LowerCloth
                } else {
                    Part::UpperCloth
                }
            } else if sleeves[i] {
                Part::UpperCloth
            } else {
                Part::LowerCloth
            };
        }
    }
}

/// Sleeves: pixels below the boundary, beside the thighs' columns, much likelier under the
/// upper garment's colours, and connected to the garment above the boundary.
fn sleeves(
    image: &Pixels,
    layout: &Layout,
    garments: &Garments,
    long_hair: &[bool],
    (left, right): (usize, usize),
) -> Vec<bool> {
    let grid = image.grid;
    let mut sleeves = vec![false; image.bins.len()];
    let boundary = garments.boundary;
    let reach = layout.row(grid, boundary, 1.5);
    for y in layout.chin + 1..=reach {
        for x in 0..grid.width {
            let i = grid.index(x, y);
            let garment = image.foreground[i] && !image.skin[i] && !long_hair[i];
            let beside_thighs = x < left || x > right;
            sleeves[i] = garment
                && (y < boundary || (beside_thighs && garments.favours_upper(image.bins[i], 2.0)));
        }
    }
    let split = grid.index(0, boundary.min(grid.height));
    let mut above = sleeves.clone();
    above[split..].fill(false);
    let mut connected = connected_to(&sleeves, &above, grid);
    connected[..split].fill(false);
    connected
}

/// The columns of the lower garment at the thighs (2nd to 98th percentile, plus a margin).
fn thigh_columns(image: &Pixels, layout: &Layout, garments: &Garments) -> Option<(usize, usize)> {
    garments.both()?;
    let grid = image.grid;
    let mut columns: Vec<usize> = Vec::new();
    for y in garments.thigh_rows.0..=garments.thigh_rows.1 {
        for x in 0..grid.width {
            let i = grid.index(x, y);
            if image.foreground[i] && !image.skin[i] && garments.favours_lower(image.bins[i], 1.0) {
                columns.push(x);
            }
        }
    }
    let n = columns.len();
    if n < 16 {
        return None;
    }
    columns.sort_unstable();
    let margin = (0.15 * layout.head_height) as usize;
    Some((
        columns[n / 50].saturating_sub(margin),
        columns[n - 1 - n / 50] + margin,
    ))
}

/// Below the boundary, the lower body spans at least the thighs' columns (or, without them,
/// the torso's hem): the backdrop pixels in that band become lower garment. This stands in
/// for the reference's body-shape parts where a pale garment vanished into a pale backdrop.
fn fill_lower_body(
    parts: &mut [Part],
    grid: Grid,
    layout: &Layout,
    boundary: usize,
    thighs: Option<(usize, usize)>,
) {
    let hd = layout.head_height;
    if (layout.bottom as f32) < boundary as f32 + 0.3 * hd || boundary == 0 {
        return;
    }
    let Some((left, right)) = thighs.or_else(|| hem_columns(parts, grid, layout, boundary)) else {
        return;
    };
    for y in boundary..=layout.bottom {
        for x in left..=right.min(grid.width - 1) {
            let i = grid.index(x, y);
            if parts[i] == Part::Background {
                parts[i] = Part::LowerCloth;
            }
        }
    }
}

/// The hem: the median run of garment pixels through the body's centre, in the rows just
/// above the boundary.
fn hem_columns(
    parts: &[Part],
    grid: Grid,
    layout: &Layout,
    boundary: usize,
) -> Option<(usize, usize)> {
    let hd = layout.head_height;
    let centre = (layout.centre_x.max(0.0) as usize).min(grid.width - 1);
    let mut lefts = Vec::new();
    let mut rights = Vec::new();
    let first_row = grid.row_at(boundary as f32 - 0.3 * hd).max(layout.chin + 1);
    for y in first_row..boundary.min(grid.height) {
        let is_top =
            |x: usize| matches!(parts[grid.index(x, y)], Part::UpperCloth | Part::LowerCloth);
        if !is_top(centre) {
            continue;
        }
        let mut left = centre;
        while left > 0 && is_top(left - 1) {
            left -= 1;
        }
        let mut right = centre;
        while right + 1 < grid.width && is_top(right + 1) {
            right += 1;
        }
        lefts.push(left);
        rights.push(right);
    }
    if lefts.is_empty() {
        return None;
    }
    lefts.sort_unstable();
    rights.sort_unstable();
    Some((lefts[lefts.len() / 2], rights[rights.len() / 2]))
}

/// Splits skin below the chin into upper body (neck, arms), hands and legs.
fn label_skin_below_chin(
    parts: &mut [Part],
    skin: &[bool],
    grid: Grid,
    layout: &Layout,
    boundary: usize,
) {
    let mut below_chin = skin.to_vec();
    below_chin[..grid.index(0, layout.chin + 1).min(skin.len())].fill(false);
    let (labels, regions) = label_components(&below_chin, grid, Connectivity::Eight);
    let hd = layout.head_height;
    let is_leg: Vec<bool> = regions
        .iter()
        .map(|r| {
            let starts_low = r.top >= boundary;
            let reaches_bottom = r.bottom + 1 >= layout.bottom;
            let tall = (r.bottom - r.top + 1) as f32 > 1.2 * hd;
            starts_low && (reaches_bottom || tall)
        })
        .collect();

    // The lowest non-leg skin on each side, when it is well below the chin, ends in a hand.
    let earliest_hand_row = layout.chin as f32 + 1.5 * hd;
    let mut lowest = [None::<usize>; 2];
    for (i, &label) in labels.iter().enumerate() {
        if label == 0 || is_leg[label as usize - 1] {
            continue;
        }
        let (x, y) = (i % grid.width, i / grid.width);
        if (y as f32) < earliest_hand_row {
            continue;
        }
        let side = usize::from(x as f32 >= layout.centre_x);
        lowest[side] = Some(lowest[side].map_or(y, |l: usize| l.max(y)));
    }
    let hand_length = 0.65 * hd;

    for (i, &label) in labels.iter().enumerate() {
        if label == 0 {
            continue;
        }
        let (x, y) = (i % grid.width, i / grid.width);
        let side = usize::from(x as f32 >= layout.centre_x);
        parts[i] = if is_leg[label as usize - 1] {
            Part::LowerSkin
        } else if lowest[side]
            .is_some_and(|l| y as f32 >= earliest_hand_row && y as f32 >= l as f32 - hand_length)
        {
            Part::Hand
        } else {
            Part::UpperSkin
        };
    }
}

/// The face: the topmost sizeable skin region in the upper part of the figure.
struct Face {
    chin: usize,
    centre_x: f32,
    /// `(row, first column, last column)` of the face's skin, forehead to chin.
    spans: Vec<(usize, usize, usize)>,
}

fn find_face(skin: &[bool], grid: Grid, top: usize, bottom: usize) -> Option<Face> {
    // Eyes, lips and teeth are holes in the face's skin; filled, they keep its rows wide.
    let (labels, regions) =
        label_components(&fill_holes(skin, grid, None), grid, Connectivity::Eight);
    let figure_height = (bottom - top + 1) as f32;
    // Judge each region by its skin within a face's height from its top, so that hair of
    // skin-like colour (small) loses to the face, and the face to a larger body region below.
    let window = (0.12 * figure_height).max(1.0) as usize;
    let mut upper_area = vec![0usize; regions.len()];
    for (i, &label) in labels.iter().enumerate() {
        if label != 0 {
            let region = label as usize - 1;
            if i / grid.width < regions[region].top + window {
                upper_area[region] += 1;
            }
        }
    }
    let min_area = (0.0015 * figure_height * figure_height).max(4.0);
    let candidates: Vec<usize> = (0..regions.len())
        .filter(|&r| {
            upper_area[r] as f32 >= min_area
                && (regions[r].top as f32) <= top as f32 + 0.3 * figure_height
        })
        .collect();
    let best_area = candidates.iter().map(|&r| upper_area[r]).max()?;
    let index = candidates
        .into_iter()
        .filter(|&r| upper_area[r] as f32 >= 0.4 * best_area as f32)
        .min_by_key(|&r| regions[r].top)?;
    let (label, region) = (index as u32 + 1, regions[index]);

    // Per row of the region: skin count and first/last column.
    let rows: Vec<(usize, usize, usize)> = (region.top..=region.bottom)
        .map(|y| {
            let row = &labels[grid.index(region.left, y)..=grid.index(region.right, y)];
            let count = row.iter().filter(|&&l| l == label).count();
            let first = row.iter().position(|&l| l == label).unwrap_or(0);
            let last = row.iter().rposition(|&l| l == label).unwrap_or(first);
            (count, region.left + first, region.left + last)
        })
        .collect();
    let reach = (figure_height / 128.0).round().max(1.0) as usize;
    let smoothed: Vec<f32> = (0..rows.len())
        .map(|k| {
            let window = &rows[k.saturating_sub(reach)..(k + reach + 1).min(rows.len())];
            window.iter().map(|r| r.0 as f32).sum::<f32>() / window.len() as f32
        })
        .collect();
    // The face's width: its widest row within about a face's height of its top.
    let mut face_width = 0f32;
    let mut widest_depth = 0;
    for (depth, &count) in smoothed.iter().enumerate() {
        if depth as f32 > 0.8 * face_width && face_width > 0.0 {
            break;
        }
        if count > face_width {
            face_width = count;
            widest_depth = depth;
        }
    }
    // Below the widest row the region narrows to the neck, then widens again (shoulders,
    // a neckline) or ends (a collar). The chin is the first row close to the neck's width.
    let deepest = ((1.6 * face_width) as usize).min(rows.len() - 1);
    let mut neck = face_width;
    for (depth, &count) in smoothed
        .iter()
        .enumerate()
        .take(deepest + 1)
        .skip(widest_depth)
    {
        let widening = count > neck + 0.3 * (face_width - neck);
        if widening && depth as f32 >= 0.6 * face_width {
            break;
        }
        neck = neck.min(count);
    }
    let close_to_neck = neck + 0.15 * (face_width - neck);
    let earliest_chin = ((0.6 * face_width) as usize).max(widest_depth);
    let chin_depth = (earliest_chin..=deepest)
        .find(|&k| smoothed[k] <= close_to_neck)
        .unwrap_or(deepest);
    // The neck test fires at the jaw's narrowing, above the chin itself; erring low keeps the
    // chin out of the mask at the cost of a little neck.
    let chin_depth = (chin_depth + (0.15 * face_width) as usize).min(rows.len() - 1);
    let spans: Vec<(usize, usize, usize)> = rows[..=chin_depth]
        .iter()
        .enumerate()
        .map(|(k, &(_, first, last))| (region.top + k, first, last))
        .collect();
    let chin = region.top + chin_depth;
    let centre_x = spans
        .iter()
        .map(|&(_, l, r)| (l + r) as f32 / 2.0)
        .sum::<f32>()
        / spans.len().max(1) as f32;
    Some(Face {
        chin,
        centre_x,
        spans,
    })
}

/// Finds the row in `first..=last` that best separates upper-garment rows above from
/// lower-garment rows below, judged on the central half of each row.
fn split_row(
    image: &Pixels,
    upper: &ColourHistogram,
    lower: &ColourHistogram,
    first: usize,
    last: usize,
) -> Option<usize> {
    if first >= last {
        return None;
    }
    // Per row: (pixels clearly more like the upper garment, clearly more like the lower one).
    let votes: Vec<(u32, u32)> = (first..=last)
        .map(|y| {
            let mut votes = (0, 0);
            for i in image.central_garment_pixels(y) {
                let colour = image.bins[i];
                let (pu, pl) = (upper.probability(colour), lower.probability(colour));
                if pu > 1.5 * pl {
                    votes.0 += 1;
                } else if pl > 1.5 * pu {
                    votes.1 += 1;
                }
            }
            votes
        })
        .collect();
    // Score of splitting before row k: upper votes above plus lower votes from k on.
    let total_upper: u32 = votes.iter().map(|v| v.0).sum();
    let total_lower: u32 = votes.iter().map(|v| v.1).sum();
    let mut upper_above = 0u32;
    let mut lower_above = 0u32;
    let mut best = (total_lower, first);
    for (k, v) in votes.iter().enumerate() {
        upper_above += v.0;
        lower_above += v.1;
        let score = upper_above + (total_lower - lower_above);
        if score > best.0 {
            best = (score, first + k + 1);
        }
    }
    // A split must explain clearly more pixels than "all upper" or "all lower" does; a lower
    // garment that barely shows (pale on a pale backdrop) still counts when its votes agree.
    let trivial = total_upper.max(total_lower);
    let minority = total_upper.min(total_lower);
    let gain = best.0.saturating_sub(trivial) as f32;
    let decisive =
        gain >= 0.25 * minority as f32 && gain >= 0.01 * (total_upper + total_lower) as f32;
    decisive.then_some(best.1)
}

/// Colour histogram of the garment pixels in the central half of rows `first..=last`.
fn sample_histogram(image: &Pixels, first: usize, last: usize) -> Option<ColourHistogram> {
    let pixels = (first..=last).flat_map(|y| image.central_garment_pixels(y));
    ColourHistogram::from_bins(pixels.map(|i| image.bins[i]), 16)
}

/// The person image with its per-pixel foreground and skin tests.
struct Pixels<'a> {
    grid: Grid,
    /// Colour histogram bin of each pixel.
    bins: &'a [u16],
    foreground: &'a [bool],
    skin: &'a [bool],
    /// First and last foreground column of each row.
    spans: &'a [Option<(usize, usize)>],
}

impl Pixels<'_> {
    /// Indices of the non-skin foreground pixels in the central half of row `y`'s figure,
    /// where the torso's garment is most likely to show.
    fn central_garment_pixels(&self, y: usize) -> impl Iterator<Item = usize> + '_ {
        let span = self.spans.get(y).copied().flatten();
        let (left, right) = match span {
            Some((left, right)) => (left + (right - left) / 4, right - (right - left) / 4),
            None => (1, 0),
        };
        (left..=right)
            .map(move |x| self.grid.index(x, y))
            .filter(|&i| self.foreground[i] && !self.skin[i])
    }
}

/// A colour histogram in YCbCr: coarse in brightness (8 levels), which shading changes, and
/// fine in chroma (32 levels each), which tells navy from denim. Each sample is spread over
/// its neighbouring chroma bins, and unseen colours keep a small probability.
struct ColourHistogram {
    /// Probability of each bin.
    probabilities: Vec<f32>,
}

impl ColourHistogram {
    const SMOOTHING: f32 = 0.05;
    const CHROMA_LEVELS: usize = 32;
    const BINS: usize = 8 * Self::CHROMA_LEVELS * Self::CHROMA_LEVELS;

    /// The histogram of the colours in `bins`, or `None` for fewer than `min_samples`.
    fn from_bins(bins: impl Iterator<Item = u16>, min_samples: usize) -> Option<Self> {
        let levels = Self::CHROMA_LEVELS;
        let mut counts = vec![0f32; Self::BINS];
        let mut samples = 0;
        for bin in bins {
            samples += 1;
            let bin = usize::from(bin);
            let (y, cb, cr) = (bin / (levels * levels), bin / levels % levels, bin % levels);
            for b in cb.saturating_sub(1)..=(cb + 1).min(levels - 1) {
                for r in cr.saturating_sub(1)..=(cr + 1).min(levels - 1) {
                    if let Some(count) = counts.get_mut((y * levels + b) * levels + r) {
                        *count += 1.0;
                    }
                }
            }
        }
        if samples < min_samples {
            return None;
        }
        let total: f32 = counts.iter().sum::<f32>() + Self::SMOOTHING * Self::BINS as f32;
        let probabilities = counts
            .iter()
            .map(|c| (c + Self::SMOOTHING) / total)
            .collect();
        Some(ColourHistogram { probabilities })
    }

    /// The bin of a colour: (brightness level, Cb level, Cr level) packed into one index.
    fn bin_ycbcr([y, cb, cr]: [i32; 3]) -> u16 {
        // 256 / 8 brightness levels, 256 / 32 chroma levels.
        let level =
            |value: i32, shift: u32, top: i32| (value.clamp(0, 255) >> shift).min(top) as u16;
        let levels = Self::CHROMA_LEVELS as u16;
        let top = levels as i32 - 1;
        (level(y, 5, 7) * levels + level(cb, 3, top)) * levels + level(cr, 3, top)
    }

    fn probability(&self, bin: u16) -> f32 {
        self.probabilities
            .get(usize::from(bin))
            .copied()
            .unwrap_or(0.0)
    }
}

/// Skin in YCbCr: the usual Cb/Cr box, widened towards red for warm, saturated faces, with a
/// floor on Cr − Cb against pale greys at the backdrop's edge, and a brightness floor against
/// brown hair, whose hue is the skin's.
fn is_skin_ycbcr([luma, cb, cr]: [i32; 3]) -> bool {
    luma >= 80 && (77..=127).contains(&cb) && (135..=180).contains(&cr) && cr - cb >= 20
}

/// Per-pixel colour tests, computed in one pass over the image.
struct ColourTests {
    far_from_backdrop: Vec<bool>,
    skin: Vec<bool>,
    /// Colour histogram bin of each pixel.
    bins: Vec<u16>,
}

fn colour_tests(rgb: &[[u8; 3]], grid: Grid) -> ColourTests {
    let (backdrop, threshold) = backdrop_model(rgb, grid);
    let backdrop = ycbcr(backdrop);
    let threshold_squared = (threshold * threshold) as i32;
    let mut tests = ColourTests {
        far_from_backdrop: Vec::with_capacity(rgb.len()),
        skin: Vec::with_capacity(rgb.len()),
        bins: Vec::with_capacity(rgb.len()),
    };
    for &colour in rgb {
        let converted = ycbcr(colour);
        tests
            .far_from_backdrop
            .push(ycbcr_distance_squared(converted, backdrop) > threshold_squared);
        tests.skin.push(is_skin_ycbcr(converted));
        tests.bins.push(ColourHistogram::bin_ycbcr(converted));
    }
    tests
}

/// The backdrop's colour and the distance beyond which a pixel is not backdrop.
fn backdrop_model(rgb: &[[u8; 3]], grid: Grid) -> ([u8; 3], f32) {
    // The person often crosses the border (cut at the thighs, long hair, elbows), so the
    // backdrop is the median of the border, recomputed over the pixels close to the first
    // estimate.
    let estimate = Backdrop::from_border(grid.width, grid.height, |x, y| rgb[grid.index(x, y)])
        .refined(distance, 40.0);
    let backdrop = estimate.colour;
    // The threshold follows the backdrop's own noise (JPEG, gradients).
    let mut noise: Vec<f32> = estimate
        .border()
        .iter()
        .map(|&p| distance(p, backdrop))
        .collect();
    let noise = match noise.len() {
        0 => 0.0,
        n => *noise.select_nth_unstable_by(n * 3 / 4, f32::total_cmp).1,
    };
    (backdrop, (3.0 * noise).clamp(16.0, 60.0))
}

/// The person: the largest connected region of non-backdrop pixels, with its holes filled.
fn segment_foreground(far_from_backdrop: &[bool], grid: Grid) -> Vec<bool> {
    let (labels, regions) = label_components(far_from_backdrop, grid, Connectivity::Four);
    let largest = regions
        .iter()
        .enumerate()
        .max_by_key(|(_, r)| r.area)
        .map(|(i, _)| i as u32 + 1);
    let Some(largest) = largest else {
        return far_from_backdrop.to_vec();
    };
    let person: Vec<bool> = labels.iter().map(|&l| l == largest).collect();
    // A figure cut by the bottom edge is closed there: a pale garment between darker hands
    // or legs then counts as a hole.
    let bottom_row = &person[grid.index(0, grid.height - 1)..];
    let cut = bottom_row
        .iter()
        .position(|&p| p)
        .zip(bottom_row.iter().rposition(|&p| p));
    fill_holes(&person, grid, cut)
}

/// Colour distance in YCbCr with chroma counted twice: the backdrop's shading changes
/// brightness, while clothes on a pale backdrop often differ mostly in hue.
fn distance(a: [u8; 3], b: [u8; 3]) -> f32 {
    ycbcr_distance(ycbcr(a), ycbcr(b))
}

fn ycbcr_distance(a: [i32; 3], b: [i32; 3]) -> f32 {
    (ycbcr_distance_squared(a, b) as f32).sqrt()
}

fn ycbcr_distance_squared([ya, cba, cra]: [i32; 3], [yb, cbb, crb]: [i32; 3]) -> i32 {
    let chroma = (cba - cbb).pow(2) + (cra - crb).pow(2);
    (ya - yb).pow(2) + 4 * chroma
}

/// JPEG's YCbCr (BT.601, full range) in 16-bit fixed point; each part lies in 0..=255.
fn ycbcr([r, g, b]: [u8; 3]) -> [i32; 3] {
    let (r, g, b) = (i32::from(r), i32::from(g), i32::from(b));
    [
        (19_595 * r + 38_470 * g + 7_471 * b) >> 16,
        128 + ((-11_059 * r - 21_709 * g + 32_768 * b) >> 16),
        128 + ((32_768 * r - 27_439 * g - 5_329 * b) >> 16),
    ]
}

fn mean_column(mask: &[bool], grid: Grid) -> f32 {
    let (sum, count) = mask
        .iter()
        .enumerate()
        .filter(|(_, &m)| m)
        .fold((0.0f64, 0u64), |(s, c), (i, _)| {
            (s + (i % grid.width) as f64, c + 1)
        });
    if count == 0 {
        grid.width as f32 / 2.0
    } else {
        (sum / count as f64) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    const BACKDROP: [u8; 3] = [236, 236, 236];
    const SKIN: [u8; 3] = [224, 172, 140];
    const HAIR: [u8; 3] = [40, 30, 30];
    const SHIRT: [u8; 3] = [40, 70, 160];
    const TROUSERS: [u8; 3] = [60, 60, 70];
    const SHOES: [u8; 3] = [20, 20, 20];

    /// Base drawing size; `figure(scale)` is `scale` times larger.
    const BASE: (u32, u32) = (192, 256);

    fn rect(
        image: &mut RgbImage,
        scale: u32,
        (x0, y0, x1, y1): (u32, u32, u32, u32),
        colour: [u8; 3],
    ) {
        for y in y0 * scale..y1 * scale {
            for x in x0 * scale..x1 * scale {
                image.put_pixel(x, y, Rgb(colour));
            }
        }
    }

    fn ellipse(
        image: &mut RgbImage,
        scale: u32,
        (cx, cy, rx, ry): (f32, f32, f32, f32),
        colour: [u8; 3],
    ) {
        let s = scale as f32;
        for y in 0..image.height() {
            for x in 0..image.width() {
                let dx = (x as f32 + 0.5) / s - cx;
                let dy = (y as f32 + 0.5) / s - cy;
                if (dx / rx).powi(2) + (dy / ry).powi(2) <= 1.0 {
                    image.put_pixel(x, y, Rgb(colour));
                }
            }
        }
    }

    /// A standing figure on a plain backdrop, in base coordinates: crown at 10, chin at 50,
    /// shirt with sleeves from 60 to 130, hands to 146, trousers from 130 to 236, shoes to 246.
    fn figure(scale: u32) -> RgbImage {
        let mut image = RgbImage::from_pixel(BASE.0 * scale, BASE.1 * scale, Rgb(BACKDROP));
        rect(&mut image, scale, (88, 44, 104, 64), SKIN); // neck
        ellipse(&mut image, scale, (96.0, 32.0, 16.0, 18.0), SKIN); // face
        ellipse(&mut image, scale, (96.0, 22.0, 18.0, 12.0), HAIR);
        rect(&mut image, scale, (66, 60, 126, 130), SHIRT); // torso
        rect(&mut image, scale, (50, 62, 66, 128), SHIRT); // sleeves
        rect(&mut image, scale, (126, 62, 142, 128), SHIRT);
        rect(&mut image, scale, (52, 128, 64, 146), SKIN); // hands
        rect(&mut image, scale, (128, 128, 140, 146), SKIN);
        rect(&mut image, scale, (68, 130, 124, 170), TROUSERS); // hips
        rect(&mut image, scale, (68, 170, 94, 236), TROUSERS); // legs
        rect(&mut image, scale, (98, 170, 124, 236), TROUSERS);
        rect(&mut image, scale, (66, 236, 95, 246), SHOES);
        rect(&mut image, scale, (97, 236, 126, 246), SHOES);
        image
    }

    /// Whether the mask repaints the point given in base coordinates.
    fn repaints(mask: &GrayImage, scale: u32, (x, y): (u32, u32)) -> bool {
        mask.get_pixel(x * scale + scale / 2, y * scale + scale / 2)
            .0[0]
            == 255
    }

    const TORSO: (u32, u32) = (96, 95);
    const SLEEVE: (u32, u32) = (58, 100);
    const FACE: (u32, u32) = (96, 34);
    const HAIR_TOP: (u32, u32) = (96, 13);
    const HAND: (u32, u32) = (58, 140);
    /// Inside the hand, close enough to the sleeve that only strong protection keeps it.
    const HAND_EDGE: (u32, u32) = (58, 130);
    const KNEE: (u32, u32) = (81, 200);
    const SHIN: (u32, u32) = (111, 225);
    const FAR_AWAY: [(u32, u32); 6] = [
        (2, 2),
        (189, 2),
        (2, 253),
        (189, 253),
        (10, 128),
        (182, 200),
    ];

    fn check_figure(scale: u32) {
        let person = figure(scale);
        let upper = auto_mask(&person, Category::Upper);
        let lower = auto_mask(&person, Category::Lower);
        let overall = auto_mask(&person, Category::Overall);
        for mask in [&upper, &lower, &overall] {
            assert_eq!(mask.dimensions(), person.dimensions());
            assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
            for point in [FACE, HAIR_TOP, HAND, HAND_EDGE].iter().chain(&FAR_AWAY) {
                assert!(
                    !repaints(mask, scale, *point),
                    "{point:?} repainted at scale {scale}"
                );
            }
        }
        for point in [TORSO, SLEEVE] {
            assert!(
                repaints(&upper, scale, point),
                "upper misses {point:?} at scale {scale}"
            );
            assert!(
                !repaints(&lower, scale, point),
                "lower takes {point:?} at scale {scale}"
            );
            assert!(repaints(&overall, scale, point));
        }
        for point in [KNEE, SHIN] {
            assert!(
                !repaints(&upper, scale, point),
                "upper takes {point:?} at scale {scale}"
            );
            assert!(
                repaints(&lower, scale, point),
                "lower misses {point:?} at scale {scale}"
            );
            assert!(repaints(&overall, scale, point));
        }
    }

    #[test]
    fn masks_follow_the_category_on_a_drawn_figure() {
        check_figure(1);
    }

    #[test]
    fn masks_follow_the_category_at_the_server_resolution() {
        // 768×1024, where the dilation kernels are larger.
        check_figure(4);
    }

    #[test]
    fn the_parse_finds_the_drawn_parts() {
        let parse = parse_person(&figure(1));
        let part = |(x, y): (u32, u32)| parse.parts[y as usize * parse.width + x as usize];
        assert_eq!(part(FACE), Part::Face);
        assert_eq!(part(HAIR_TOP), Part::Hair);
        assert_eq!(part(TORSO), Part::UpperCloth);
        assert_eq!(part(SLEEVE), Part::UpperCloth);
        assert_eq!(part(HAND), Part::Hand);
        assert_eq!(part((96, 58)), Part::UpperSkin); // neck
        assert_eq!(part(KNEE), Part::LowerCloth);
        assert_eq!(part((80, 242)), Part::Feet);
        assert_eq!(part((10, 128)), Part::Background);
    }

    #[test]
    fn overall_repaints_both_garments_and_the_neck() {
        let person = figure(1);
        let overall = auto_mask(&person, Category::Overall);
        let upper = auto_mask(&person, Category::Upper);
        let lower = auto_mask(&person, Category::Lower);
        // Overall repaints at least what either garment's mask does, within the figure.
        for (o, (u, l)) in overall.pixels().zip(upper.pixels().zip(lower.pixels())) {
            if u.0[0] == 255 && l.0[0] == 255 {
                assert_eq!(o.0[0], 255);
            }
        }
        assert!(repaints(&overall, 1, (96, 58)));
        assert!(repaints(&upper, 1, (96, 58)));
        assert!(!repaints(&lower, 1, (96, 58)));
    }

    /// A parse of `width × height`: the left `split` columns are `left`, the rest `right`.
    fn halves(width: usize, height: usize, split: usize, left: Part, right: Part) -> PersonParse {
        let parts = (0..width * height)
            .map(|i| if i % width < split { left } else { right })
            .collect();
        PersonParse {
            width,
            height,
            parts,
        }
    }

    /// First column of the first row that the composed mask leaves out.
    fn mask_extent(parse: &PersonParse, category: Category) -> usize {
        let mask = compose_mask(parse, category);
        mask[..parse.width]
            .iter()
            .position(|&m| !m)
            .unwrap_or(parse.width)
    }

    #[test]
    fn the_final_dilation_reaches_into_strongly_protected_parts_by_its_radius() {
        // 1000 px: kernel 5, radius 2. The face is cut out, then the final dilation adds 2.
        let parse = halves(1000, 60, 500, Part::UpperCloth, Part::Face);
        assert_eq!(mask_extent(&parse, Category::Upper), 502);
        // At 256 px the kernel is 1: no growth at all.
        let parse = halves(256, 40, 100, Part::UpperCloth, Part::Face);
        assert_eq!(mask_extent(&parse, Category::Upper), 100);
    }

    #[test]
    fn the_mask_grows_into_the_backdrop_by_the_documented_steps() {
        // Radius 2: the dense parts grow by 8 × 2 = 16 (two dilations at a quarter of the
        // resolution), the blur by less than half its 41-px kernel, the final dilation by 2.
        let parse = halves(1000, 60, 500, Part::LowerCloth, Part::Background);
        let extent = mask_extent(&parse, Category::Lower);
        assert!(
            (500 + 16 + 2..=500 + 16 + 20 + 2).contains(&extent),
            "{extent}"
        );
        // Not repainted for the other garment, whose hull it is cut out of.
        assert_eq!(mask_extent(&parse, Category::Upper), 0);
    }

    #[test]
    fn a_plain_image_gets_an_empty_mask() {
        for colour in [[0, 0, 0], [255, 255, 255], SKIN] {
            let person = RgbImage::from_pixel(64, 80, Rgb(colour));
            for category in [Category::Upper, Category::Lower, Category::Overall] {
                let mask = auto_mask(&person, category);
                assert!(mask.pixels().all(|p| p.0[0] == 0));
            }
        }
    }

    #[test]
    fn odd_sizes_and_noise_do_not_panic() {
        // A small linear congruential generator keeps the noise reproducible.
        let mut state = 0x2545_f491_u32;
        let mut noise = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        };
        let sizes = [
            (1, 1),
            (1, 2),
            (2, 1),
            (2, 2),
            (1, 300),
            (300, 1),
            (3, 700),
            (700, 3),
            (17, 13),
        ];
        for (width, height) in sizes {
            let plain = RgbImage::from_pixel(width, height, Rgb(SKIN));
            let noisy = RgbImage::from_fn(width, height, |_, _| Rgb([noise(), noise(), noise()]));
            let dot = RgbImage::from_fn(width, height, |x, y| {
                Rgb(if x == width / 2 && y == height / 2 {
                    SKIN
                } else {
                    BACKDROP
                })
            });
            for person in [plain, noisy, dot] {
                for category in [Category::Upper, Category::Lower, Category::Overall] {
                    assert_eq!(auto_mask(&person, category).dimensions(), (width, height));
                }
            }
        }
        // Noise and stripes at a size where every step has room to run.
        let noisy = RgbImage::from_fn(160, 200, |_, _| Rgb([noise(), noise(), noise()]));
        let stripes = RgbImage::from_fn(160, 200, |x, y| {
            Rgb(if (x / 3 + y / 5) % 2 == 0 { SKIN } else { HAIR })
        });
        let cropped = image::imageops::crop_imm(&figure(1), 40, 20, 100, 236).to_image();
        for person in [noisy, stripes, cropped] {
            for category in [Category::Upper, Category::Lower, Category::Overall] {
                assert_eq!(
                    auto_mask(&person, category).dimensions(),
                    person.dimensions()
                );
            }
        }
    }

    /// Share of repainted pixels, mean repainted row as a share of the height, and the share
    /// of the top tenth of rows (the head) that is repainted.
    fn mask_stats(mask: &GrayImage) -> (f64, f64, f64) {
        let (width, height) = mask.dimensions();
        let (mut count, mut row_sum, mut head) = (0u64, 0u64, 0u64);
        for (_, y, p) in mask.enumerate_pixels() {
            if p.0[0] == 255 {
                count += 1;
                row_sum += u64::from(y);
                if y < height / 10 {
                    head += 1;
                }
            }
        }
        let pixels = f64::from(width * height);
        (
            count as f64 / pixels,
            row_sum as f64 / count.max(1) as f64 / f64::from(height),
            head as f64 / (pixels / 10.0),
        )
    }

    #[test]
    fn masks_on_the_sample_photos_follow_the_garments() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples/person");
        let mut photos: Vec<_> = std::fs::read_dir(&dir)
            .expect("the sample photos")
            .map(|e| e.expect("entry").path())
            .collect();
        photos.sort();
        assert_eq!(photos.len(), 6);
        for path in photos {
            let photo = image::open(&path).expect("decodes").to_rgb8();
            let person = crate::models::catvton::preprocess::resize_and_crop(&photo, 768, 1024);
            let upper = mask_stats(&auto_mask(&person, Category::Upper));
            let lower = mask_stats(&auto_mask(&person, Category::Lower));
            let overall = mask_stats(&auto_mask(&person, Category::Overall));
            let name = path.display();
            // Tops fill the middle of the frame, trousers and skirts its bottom third.
            assert!((0.15..0.55).contains(&upper.0), "{name}: upper {upper:?}");
            assert!((0.35..0.65).contains(&upper.1), "{name}: upper {upper:?}");
            assert!((0.08..0.40).contains(&lower.0), "{name}: lower {lower:?}");
            assert!((0.70..0.95).contains(&lower.1), "{name}: lower {lower:?}");
            // Overall takes both garments; none of the masks reaches the head.
            assert!(
                overall.0 >= upper.0.max(lower.0),
                "{name}: overall {overall:?}"
            );
            assert!(overall.0 <= 0.7, "{name}: overall {overall:?}");
            for stats in [upper, lower, overall] {
                assert!(stats.2 < 0.02, "{name}: the head is repainted {stats:?}");
            }
        }
    }
}
