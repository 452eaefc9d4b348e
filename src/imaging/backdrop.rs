//! The plain backdrop behind a product photo or a person, estimated from the image border: the
//! garment mask and a model's drawn person mask both start from it.

/// The backdrop's colour and the border pixels taken as backdrop.
#[derive(Debug, Clone, PartialEq)]
pub struct Backdrop {
    /// The per-channel median of [`Backdrop::border`].
    pub colour: [u8; 3],
    border: Vec<[u8; 3]>,
}

impl Backdrop {
    /// The per-channel median of the image's border ring, read through `pixel(x, y)`. The
    /// ring is the top and bottom rows and the left and right columns, so each corner counts
    /// twice. An empty image gives black.
    pub fn from_border(
        width: usize,
        height: usize,
        pixel: impl Fn(usize, usize) -> [u8; 3],
    ) -> Self {
        let mut border = Vec::with_capacity(2 * (width + height));
        if width > 0 && height > 0 {
            for x in 0..width {
                border.push(pixel(x, 0));
                border.push(pixel(x, height - 1));
            }
            for y in 0..height {
                border.push(pixel(0, y));
                border.push(pixel(width - 1, y));
            }
        }
        Backdrop {
            colour: channel_medians(&border),
            border,
        }
    }

    /// The estimate again over the border pixels closer than `radius` (by `distance`) to this
    /// one, for a figure that crosses the border (cut at the thighs, long hair, elbows). When
    /// none is that close the colour stays and no border pixel is left.
    pub fn refined(self, distance: impl Fn([u8; 3], [u8; 3]) -> f32, radius: f32) -> Self {
        let inliers: Vec<[u8; 3]> = self
            .border
            .iter()
            .copied()
            .filter(|&p| distance(p, self.colour) < radius)
            .collect();
        let colour = if inliers.is_empty() {
            self.colour
        } else {
            channel_medians(&inliers)
        };
        Backdrop {
            colour,
            border: inliers,
        }
    }

    /// The border pixels the estimate was taken over (after [`Backdrop::refined`], only the
    /// close ones): what the backdrop's own noise is measured on.
    pub fn border(&self) -> &[[u8; 3]] {
        &self.border
    }
}

/// The upper median of each channel (element `n / 2` once sorted); 0 for no colours.
pub fn channel_medians(colours: &[[u8; 3]]) -> [u8; 3] {
    std::array::from_fn(|c| {
        let mut channel: Vec<u8> = colours.iter().map(|p| p[c]).collect();
        match channel.len() {
            0 => 0,
            n => *channel.select_nth_unstable(n / 2).1,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3×3 image, rows top to bottom; the ring holds 12 entries (corners twice).
    fn image(rows: [[[u8; 3]; 3]; 3]) -> impl Fn(usize, usize) -> [u8; 3] {
        move |x, y| rows[y][x]
    }

    const B: [u8; 3] = [0, 0, 0];
    const G: [u8; 3] = [100, 100, 100];
    const L: [u8; 3] = [104, 104, 104];
    const W: [u8; 3] = [255, 255, 255];

    fn max_channel_distance(a: [u8; 3], b: [u8; 3]) -> f32 {
        (0..3)
            .map(|c| a[c].abs_diff(b[c]))
            .max()
            .unwrap_or(0)
            .into()
    }

    #[test]
    fn the_median_counts_corners_twice_and_ignores_the_inside() {
        // Ring: top row black (corners twice: 5 entries), left column grey 100 (corner (0, 2)
        // twice and (0, 1): 3), the rest 104 (corner (2, 2) twice, (2, 1), (1, 2): 4). Sorted:
        // 0 ×5, 100 ×3, 104 ×4; entry 6 is 100. The white centre is not on the ring.
        let backdrop = Backdrop::from_border(3, 3, image([[B, B, B], [G, W, L], [G, L, L]]));
        assert_eq!(backdrop.colour, [100, 100, 100]);
        assert_eq!(backdrop.border().len(), 12);
    }

    #[test]
    fn refining_drops_the_far_border_pixels_and_takes_the_median_again() {
        let backdrop = Backdrop::from_border(3, 3, image([[B, B, B], [G, W, L], [G, L, L]]))
            .refined(max_channel_distance, 10.0);
        // Left: 100 ×3, 104 ×4; entry 3 is 104.
        assert_eq!(backdrop.colour, [104, 104, 104]);
        assert_eq!(backdrop.border().len(), 7);
        assert!(backdrop.border().iter().all(|&p| p == G || p == L));
    }

    #[test]
    fn channels_are_medians_on_their_own() {
        // Ring of a 2×1 image: (0, 0) and (1, 0) as top and bottom rows, then as the left and
        // right columns: three entries of each pixel.
        let pixels = [[10, 200, 7], [30, 100, 9]];
        let backdrop = Backdrop::from_border(2, 1, |x, _| pixels[x]);
        assert_eq!(backdrop.border().len(), 6);
        // Each channel holds three of each value; entry 3 of 6 is the larger one.
        assert_eq!(backdrop.colour, [30, 200, 9]);
    }

    #[test]
    fn nothing_close_keeps_the_colour_and_no_border() {
        let backdrop = Backdrop::from_border(3, 3, image([[B, W, B], [W, G, W], [B, W, B]]));
        // Ring: black corners ×8, white edges ×4; entry 6 is black.
        assert_eq!(backdrop.colour, B);
        let refined = backdrop.refined(|_, _| 1000.0, 10.0);
        assert_eq!(refined.colour, B);
        assert!(refined.border().is_empty());
        assert_eq!(Backdrop::from_border(0, 0, |_, _| W).colour, B);
    }
}
