//! The box operations of detectron2's R-CNN as its official code runs them on the CPU: box
//! regression (`Box2BoxTransform`), clipping, the empty-box filter, top-k, NMS and the FPN level
//! of each box. Each one keeps PyTorch's float32 arithmetic order, and the index-returning ones
//! keep its order among equal scores, which decides which boxes survive a tie: `torch.topk` and
//! `torch.sort` on the CPU are libstdc++'s `std::partial_sort`, `std::nth_element` and
//! `std::sort` (introsort), reproduced step for step below (`stl`), while torchvision's NMS sorts
//! stably.

/// A box as [x1, y1, x2, y2] in pixels.
pub type BoxXyxy = [f32; 4];

/// Boxes with more coordinates than this take torchvision's one-NMS-per-group path of
/// `batched_nms` on the CPU; up to it, the single NMS over boxes offset per group.
const BATCHED_NMS_OFFSET_MAX_COORDINATES: usize = 4000;

/// detectron2's Box2BoxTransform (weights (wx, wy, ww, wh), scale_clamp = ln(1000/16) by
/// default).
#[derive(Debug, Clone, Copy)]
pub struct BoxTransform {
    pub weights: [f32; 4],
    /// The largest dw and dh applied (after division by the weights): ln(1000 / 16) turns a
    /// 16-pixel box into at most a 1000-pixel one.
    pub scale_clamp: f32,
}

impl BoxTransform {
    /// The transform with detectron2's default clamp, ln(1000 / 16) rounded to f32 (as
    /// `torch.clamp` rounds its Python-float bound).
    pub fn new(weights: [f32; 4]) -> Self {
        Self {
            weights,
            scale_clamp: (1000.0f64 / 16.0).ln() as f32,
        }
    }

    /// apply_deltas for one box, same f32 arithmetic order as detectron2.
    pub fn apply(&self, deltas: [f32; 4], anchor: BoxXyxy) -> BoxXyxy {
        let width = anchor[2] - anchor[0];
        let height = anchor[3] - anchor[1];
        let ctr_x = anchor[0] + 0.5 * width;
        let ctr_y = anchor[1] + 0.5 * height;
        let [wx, wy, ww, wh] = self.weights;
        let dx = deltas[0] / wx;
        let dy = deltas[1] / wy;
        // torch.clamp(max=) keeps NaN, which f32::min would not.
        let clamp = |d: f32| {
            if d > self.scale_clamp {
                self.scale_clamp
            } else {
                d
            }
        };
        let dw = clamp(deltas[2] / ww);
        let dh = clamp(deltas[3] / wh);
        let pred_ctr_x = dx * width + ctr_x;
        let pred_ctr_y = dy * height + ctr_y;
        let pred_w = dw.exp() * width;
        let pred_h = dh.exp() * height;
        [
            pred_ctr_x - 0.5 * pred_w,
            pred_ctr_y - 0.5 * pred_h,
            pred_ctr_x + 0.5 * pred_w,
            pred_ctr_y + 0.5 * pred_h,
        ]
    }
}

/// `torch.clamp(x, min=lo, max=hi)`: NaN stays NaN, and hi wins when lo > hi.
fn torch_clamp(x: f32, lo: f32, hi: f32) -> f32 {
    if x.is_nan() {
        x
    } else {
        x.max(lo).min(hi)
    }
}

/// Boxes.clip((height, width)).
pub fn clip(b: BoxXyxy, height: f32, width: f32) -> BoxXyxy {
    [
        torch_clamp(b[0], 0.0, width),
        torch_clamp(b[1], 0.0, height),
        torch_clamp(b[2], 0.0, width),
        torch_clamp(b[3], 0.0, height),
    ]
}

/// Boxes.nonempty(threshold): width > t and height > t.
pub fn nonempty(b: &BoxXyxy, threshold: f32) -> bool {
    b[2] - b[0] > threshold && b[3] - b[1] > threshold
}

/// PyTorch's descending order on the CPU: NaN before every number, then larger first.
fn precedes(a: f32, b: f32) -> bool {
    (a.is_nan() && !b.is_nan()) || a > b
}

/// Indices of the k largest scores, descending (what torch.topk(sorted=True) returns on CPU).
///
/// NaN counts as the largest score, and k beyond `scores.len()` is taken as all of them (where
/// torch raises). Equal scores come in the order PyTorch's CPU kernel leaves them, which is
/// not index order: with `k * 64 <= n` it is libstdc++'s `std::partial_sort` (a heap), else
/// `std::nth_element` followed by `std::sort` of the first k - 1 (introselect, introsort).
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(scores.len());
    if k == 0 {
        return Vec::new();
    }
    let mut queue: Vec<(f32, usize)> = scores.iter().copied().zip(0..).collect();
    let first = |a: &(f32, usize), b: &(f32, usize)| precedes(a.0, b.0);
    if k * 64 <= scores.len() {
        stl::partial_sort(&mut queue, k, &first);
    } else {
        stl::nth_element(&mut queue, k - 1, &first);
        stl::sort(&mut queue[..k - 1], &first);
    }
    queue[..k].iter().map(|&(_, i)| i).collect()
}

/// Indices that sort `scores` in descending order, as `torch.sort(descending=True)` (not
/// stable) answers on the CPU: libstdc++'s `std::sort`, which keeps index order among equal
/// scores only up to 16 elements. NaN comes first.
pub fn sort_descending(scores: &[f32]) -> Vec<usize> {
    let mut pairs: Vec<(f32, usize)> = scores.iter().copied().zip(0..).collect();
    stl::sort(&mut pairs, &|a: &(f32, usize), b: &(f32, usize)| {
        precedes(a.0, b.0)
    });
    pairs.into_iter().map(|(_, i)| i).collect()
}

/// torchvision.ops.nms on the CPU: kept indices by decreasing score.
///
/// Boxes are visited by decreasing score, equal scores in index order (a stable sort); a box
/// is suppressed when its IoU with a kept one, computed in f32, exceeds `iou_threshold`
/// compared in f64 as torchvision does (an IoU of exactly `0.3f32` exceeds a threshold of 0.3).
/// This takes f64 where the other thresholds are f32 for that reason.
///
/// # Panics
///
/// If `scores` and `boxes` differ in length.
pub fn nms(boxes: &[BoxXyxy], scores: &[f32], iou_threshold: f64) -> Vec<usize> {
    assert_eq!(boxes.len(), scores.len(), "nms: one score per box");
    let areas: Vec<f32> = boxes
        .iter()
        .map(|b| (b[2] - b[0]) * (b[3] - b[1]))
        .collect();
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| {
        if precedes(scores[a], scores[b]) {
            std::cmp::Ordering::Less
        } else if precedes(scores[b], scores[a]) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    // std::max and std::min of C++: the first argument unless the second is strictly beyond.
    let max = |a: f32, b: f32| if a < b { b } else { a };
    let min = |a: f32, b: f32| if b < a { b } else { a };
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (rank, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let kept = boxes[i];
        for &j in &order[rank + 1..] {
            if suppressed[j] {
                continue;
            }
            let other = boxes[j];
            let w = max(0.0, min(kept[2], other[2]) - max(kept[0], other[0]));
            let h = max(0.0, min(kept[3], other[3]) - max(kept[1], other[1]));
            let inter = w * h;
            let iou = inter / (areas[i] + areas[j] - inter);
            if f64::from(iou) > iou_threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// torchvision.ops.batched_nms as detectron2 calls it (boxes.float()): no box suppresses one
/// of another group. Kept indices by decreasing score.
///
/// torchvision 0.16.2 picks its strategy by size: on the CPU, up to 4000 coordinates (1000
/// boxes) it runs one NMS over boxes shifted by `group * (max coordinate + 1)`, whose f32
/// rounding moves IoUs near the threshold; beyond that, one NMS per group, then an unstable
/// descending sort of the kept indices by score ([`sort_descending`]), which orders their ties.
/// The offset path sorts stably, so ties keep index order there. `iou_threshold` is f64 as in
/// [`nms`].
///
/// # Panics
///
/// If `scores` or `groups` differ in length from `boxes`.
pub fn batched_nms(
    boxes: &[BoxXyxy],
    scores: &[f32],
    groups: &[usize],
    iou_threshold: f64,
) -> Vec<usize> {
    assert_eq!(boxes.len(), scores.len(), "batched_nms: one score per box");
    assert_eq!(boxes.len(), groups.len(), "batched_nms: one group per box");
    if boxes.is_empty() {
        return Vec::new();
    }
    if boxes.len() * 4 > BATCHED_NMS_OFFSET_MAX_COORDINATES {
        return batched_nms_per_group(boxes, scores, groups, iou_threshold);
    }
    // boxes.max(), which NaN wins.
    let max_coordinate = boxes.iter().flatten().fold(f32::NEG_INFINITY, |m, &c| {
        if c.is_nan() || m.is_nan() {
            f32::NAN
        } else {
            m.max(c)
        }
    });
    let stride = max_coordinate + 1.0;
    let shifted: Vec<BoxXyxy> = boxes
        .iter()
        .zip(groups)
        .map(|(b, &g)| {
            let offset = g as f32 * stride;
            [b[0] + offset, b[1] + offset, b[2] + offset, b[3] + offset]
        })
        .collect();
    nms(&shifted, scores, iou_threshold)
}

/// torchvision's `_batched_nms_vanilla`.
fn batched_nms_per_group(
    boxes: &[BoxXyxy],
    scores: &[f32],
    groups: &[usize],
    iou_threshold: f64,
) -> Vec<usize> {
    let mut distinct = groups.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let mut kept = vec![false; boxes.len()];
    for group in distinct {
        let members: Vec<usize> = (0..boxes.len()).filter(|&i| groups[i] == group).collect();
        let member_boxes: Vec<BoxXyxy> = members.iter().map(|&i| boxes[i]).collect();
        let member_scores: Vec<f32> = members.iter().map(|&i| scores[i]).collect();
        for k in nms(&member_boxes, &member_scores, iou_threshold) {
            kept[members[k]] = true;
        }
    }
    let kept: Vec<usize> = (0..boxes.len()).filter(|&i| kept[i]).collect();
    let kept_scores: Vec<f32> = kept.iter().map(|&i| scores[i]).collect();
    sort_descending(&kept_scores)
        .into_iter()
        .map(|k| kept[k])
        .collect()
}

/// detectron2 poolers.assign_boxes_to_levels: level index (0-based from min_level) per box.
///
/// `floor(canonical_level + log2(sqrt(area) / canonical_box_size + 1e-8))`, clamped to the
/// levels, in f32. A box of negative area has a NaN size, which torch converts to `i64::MIN`:
/// its index is `i64::MIN - min_level` (wrapped), beyond every level, and the pooler leaves its
/// output zero, as detectron2's does.
pub fn assign_levels(
    boxes: &[BoxXyxy],
    min_level: u32,
    max_level: u32,
    canonical_box_size: f32,
    canonical_level: u32,
) -> Vec<usize> {
    boxes
        .iter()
        .map(|b| {
            let size = ((b[2] - b[0]) * (b[3] - b[1])).sqrt();
            let ratio = size / canonical_box_size + 1e-8;
            // log2 rounded once to f32, as torch's float32 log2 is.
            let log2 = (f64::from(ratio)).log2() as f32;
            let level = torch_clamp(
                (canonical_level as f32 + log2).floor(),
                min_level as f32,
                max_level as f32,
            );
            // x86's float-to-int64 conversion answers i64::MIN for NaN.
            let level = if level.is_nan() {
                i64::MIN
            } else {
                level as i64
            };
            level.wrapping_sub(i64::from(min_level)) as usize
        })
        .collect()
}

/// libstdc++'s (GCC 9, which builds PyTorch 2.1's wheels) `std::sort`, `std::partial_sort` and
/// `std::nth_element`, step for step: the order they leave equal elements in is part of what
/// PyTorch answers. `first(a, b)` is the comparator: whether `a` goes before `b`.
mod stl {
    /// Below this length introsort leaves a range to the final insertion sort.
    const THRESHOLD: usize = 16;

    /// floor(log2(n)) for n > 0.
    fn lg(n: usize) -> usize {
        (usize::BITS - 1 - n.leading_zeros()) as usize
    }

    pub fn sort<T: Copy>(v: &mut [T], first: &impl Fn(&T, &T) -> bool) {
        if v.is_empty() {
            return;
        }
        introsort_loop(v, 2 * lg(v.len()), first);
        final_insertion_sort(v, first);
    }

    /// Sorts the `middle` first elements of the whole into `v[..middle]`.
    pub fn partial_sort<T: Copy>(v: &mut [T], middle: usize, first: &impl Fn(&T, &T) -> bool) {
        heap_select(v, middle, first);
        sort_heap(&mut v[..middle], first);
    }

    pub fn nth_element<T: Copy>(v: &mut [T], nth: usize, first: &impl Fn(&T, &T) -> bool) {
        if v.is_empty() || nth == v.len() {
            return;
        }
        let mut depth_limit = 2 * lg(v.len());
        let (mut lo, mut hi) = (0, v.len());
        while hi - lo > 3 {
            if depth_limit == 0 {
                heap_select(&mut v[lo..hi], nth - lo + 1, first);
                v.swap(lo, nth);
                return;
            }
            depth_limit -= 1;
            let cut = lo + unguarded_partition_pivot(&mut v[lo..hi], first);
            if cut <= nth {
                lo = cut;
            } else {
                hi = cut;
            }
        }
        insertion_sort(&mut v[lo..hi], first);
    }

    fn introsort_loop<T: Copy>(
        mut v: &mut [T],
        mut depth_limit: usize,
        first: &impl Fn(&T, &T) -> bool,
    ) {
        while v.len() > THRESHOLD {
            if depth_limit == 0 {
                let len = v.len();
                partial_sort(v, len, first);
                return;
            }
            depth_limit -= 1;
            let cut = unguarded_partition_pivot(v, first);
            let (left, right) = std::mem::take(&mut v).split_at_mut(cut);
            introsort_loop(right, depth_limit, first);
            v = left;
        }
    }

    /// Moves the median of v[1], v[mid] and v[last] to v[0], then partitions v[1..] around it.
    fn unguarded_partition_pivot<T: Copy>(v: &mut [T], first: &impl Fn(&T, &T) -> bool) -> usize {
        let (a, b, c) = (1, v.len() / 2, v.len() - 1);
        let median = if first(&v[a], &v[b]) {
            if first(&v[b], &v[c]) {
                b
            } else if first(&v[a], &v[c]) {
                c
            } else {
                a
            }
        } else if first(&v[a], &v[c]) {
            a
        } else if first(&v[b], &v[c]) {
            c
        } else {
            b
        };
        v.swap(0, median);
        let (mut lo, mut hi) = (1, v.len());
        loop {
            while first(&v[lo], &v[0]) {
                lo += 1;
            }
            hi -= 1;
            while first(&v[0], &v[hi]) {
                hi -= 1;
            }
            if lo >= hi {
                return lo;
            }
            v.swap(lo, hi);
            lo += 1;
        }
    }

    fn final_insertion_sort<T: Copy>(v: &mut [T], first: &impl Fn(&T, &T) -> bool) {
        if v.len() > THRESHOLD {
            insertion_sort(&mut v[..THRESHOLD], first);
            for i in THRESHOLD..v.len() {
                unguarded_linear_insert(v, i, first);
            }
        } else {
            insertion_sort(v, first);
        }
    }

    fn insertion_sort<T: Copy>(v: &mut [T], first: &impl Fn(&T, &T) -> bool) {
        for i in 1..v.len() {
            if first(&v[i], &v[0]) {
                let value = v[i];
                v.copy_within(0..i, 1);
                v[0] = value;
            } else {
                unguarded_linear_insert(v, i, first);
            }
        }
    }

    /// Shifts v[i] down past the elements it goes before; some element before it stops it.
    fn unguarded_linear_insert<T: Copy>(
        v: &mut [T],
        mut i: usize,
        first: &impl Fn(&T, &T) -> bool,
    ) {
        let value = v[i];
        while first(&value, &v[i - 1]) {
            v[i] = v[i - 1];
            i -= 1;
        }
        v[i] = value;
    }

    /// Leaves in v[..middle] a heap of the `middle` elements that go first.
    fn heap_select<T: Copy>(v: &mut [T], middle: usize, first: &impl Fn(&T, &T) -> bool) {
        if middle == 0 {
            return;
        }
        make_heap(&mut v[..middle], first);
        for i in middle..v.len() {
            if first(&v[i], &v[0]) {
                pop_heap(v, middle, i, first);
            }
        }
    }

    fn make_heap<T: Copy>(v: &mut [T], first: &impl Fn(&T, &T) -> bool) {
        let len = v.len();
        if len < 2 {
            return;
        }
        let mut parent = (len - 2) / 2;
        loop {
            let value = v[parent];
            adjust_heap(v, parent, len, value, first);
            if parent == 0 {
                return;
            }
            parent -= 1;
        }
    }

    fn sort_heap<T: Copy>(v: &mut [T], first: &impl Fn(&T, &T) -> bool) {
        let mut last = v.len();
        while last > 1 {
            last -= 1;
            pop_heap(v, last, last, first);
        }
    }

    /// Moves the top of the heap v[..len] to v[result] and puts v[result]'s value in the heap.
    fn pop_heap<T: Copy>(v: &mut [T], len: usize, result: usize, first: &impl Fn(&T, &T) -> bool) {
        let value = v[result];
        v[result] = v[0];
        adjust_heap(v, 0, len, value, first);
    }

    fn adjust_heap<T: Copy>(
        v: &mut [T],
        mut hole: usize,
        len: usize,
        value: T,
        first: &impl Fn(&T, &T) -> bool,
    ) {
        let top = hole;
        let mut child = hole;
        while child < (len - 1) / 2 {
            child = 2 * (child + 1);
            if first(&v[child], &v[child - 1]) {
                child -= 1;
            }
            v[hole] = v[child];
            hole = child;
        }
        if len.is_multiple_of(2) && child == (len - 2) / 2 {
            child = 2 * (child + 1);
            v[hole] = v[child - 1];
            hole = child - 1;
        }
        // push_heap: sift the value back up towards `top`.
        while hole > top {
            let parent = (hole - 1) / 2;
            if !first(&v[parent], &value) {
                break;
            }
            v[hole] = v[parent];
            hole = parent;
        }
        v[hole] = value;
    }
}
