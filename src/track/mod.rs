//! Multi-object tracking, ByteTrack-style: detections are associated with tracks in two passes
//! (confident boxes first, then the low-score ones that usually belong to occluded objects),
//! by IoU against each track's motion-predicted box; lost tracks are kept for a while so an
//! object that disappears for a few frames gets its id back.

use crate::detect::{Detection, iou};

/// Tracker thresholds (ByteTrack's defaults, per frame).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerConfig {
    /// Detections at or above this score take part in the first association.
    pub high_score: f32,
    /// Detections between this and `high_score` only extend existing tracks.
    pub low_score: f32,
    /// A detection this confident may start a new track.
    pub new_track_score: f32,
    /// Minimum IoU for the first (confident) association.
    pub match_iou: f32,
    /// Minimum IoU for the second (low-score) association.
    pub low_match_iou: f32,
    /// Frames a lost track is kept before it ends.
    pub max_lost_frames: u32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            high_score: 0.5,
            low_score: 0.1,
            new_track_score: 0.6,
            match_iou: 0.2,
            low_match_iou: 0.5,
            max_lost_frames: 30,
        }
    }
}

/// Constant-velocity Kalman filter for one coordinate (position + velocity).
#[derive(Debug, Clone, Copy)]
struct Axis {
    x: f32,
    v: f32,
    // Covariance [[p00, p01], [p01, p11]].
    p00: f32,
    p01: f32,
    p11: f32,
}

impl Axis {
    fn new(x: f32, scale: f32) -> Axis {
        Axis {
            x,
            v: 0.0,
            p00: (0.1 * scale).powi(2),
            p01: 0.0,
            p11: (0.1 * scale).powi(2),
        }
    }

    fn predict(&mut self, q: f32) {
        self.x += self.v;
        // P = F P Fᵀ + Q with F = [[1, 1], [0, 1]].
        self.p00 += 2.0 * self.p01 + self.p11 + q;
        self.p01 += self.p11;
        self.p11 += q;
    }

    fn update(&mut self, z: f32, r: f32) {
        let s = self.p00 + r;
        let (k0, k1) = (self.p00 / s, self.p01 / s);
        let y = z - self.x;
        self.x += k0 * y;
        self.v += k1 * y;
        let (p00, p01, p11) = (self.p00, self.p01, self.p11);
        self.p00 = (1.0 - k0) * p00;
        self.p01 = (1.0 - k0) * p01;
        self.p11 = p11 - k1 * p01;
    }
}

/// The motion model of one track: centre and size, each with a velocity.
#[derive(Debug, Clone, Copy)]
struct Motion {
    axes: [Axis; 4],
}

impl Motion {
    fn new(b: [f32; 4]) -> Motion {
        let (cx, cy, w, h) = centre_size(b);
        let scale = w.max(h).max(1.0);
        Motion {
            axes: [
                Axis::new(cx, scale),
                Axis::new(cy, scale),
                Axis::new(w, scale),
                Axis::new(h, scale),
            ],
        }
    }

    fn size(&self) -> f32 {
        self.axes[2].x.max(self.axes[3].x).max(1.0)
    }

    fn predict(&mut self) {
        // Noise proportional to the object's size, as in ByteTrack's filter.
        let q = (0.05 * self.size()).powi(2);
        for a in &mut self.axes {
            a.predict(q);
        }
    }

    fn update(&mut self, b: [f32; 4]) {
        let (cx, cy, w, h) = centre_size(b);
        let r = (0.05 * self.size()).powi(2);
        for (a, z) in self.axes.iter_mut().zip([cx, cy, w, h]) {
            a.update(z, r);
        }
    }

    fn bbox(&self) -> [f32; 4] {
        let [cx, cy, w, h] = self.axes.map(|a| a.x);
        let (w, h) = (w.max(1.0), h.max(1.0));
        [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
    }
}

fn centre_size(b: [f32; 4]) -> (f32, f32, f32, f32) {
    (
        (b[0] + b[2]) / 2.0,
        (b[1] + b[3]) / 2.0,
        b[2] - b[0],
        b[3] - b[1],
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Seen once, not confirmed yet.
    New,
    Tracked,
    Lost,
}

#[derive(Debug, Clone)]
struct Track {
    id: u64,
    class_id: usize,
    motion: Motion,
    state: State,
    /// Frames since last matched.
    lost_for: u32,
    /// Frames matched in total.
    hits: u32,
}

/// A detection with the id of the track it belongs to (None: not confirmed yet).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tracked {
    /// The detection.
    pub detection: Detection,
    /// Its track (None until confirmed).
    pub track_id: Option<u64>,
}

/// ByteTrack-style tracker. Feed it every frame's detections in order.
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
    frame: u64,
}

impl Tracker {
    /// A tracker with `config`'s thresholds.
    pub fn new(config: TrackerConfig) -> Tracker {
        Tracker {
            config,
            tracks: Vec::new(),
            next_id: 1,
            frame: 0,
        }
    }

    /// Associate this frame's detections; returns them in the same order with track ids.
    pub fn update(&mut self, detections: &[Detection]) -> Vec<Tracked> {
        self.frame += 1;
        let cfg = self.config;
        for t in &mut self.tracks {
            t.motion.predict();
        }
        let mut assigned: Vec<Option<usize>> = vec![None; detections.len()];
        let high: Vec<usize> = (0..detections.len())
            .filter(|&i| detections[i].score >= cfg.high_score)
            .collect();
        let low: Vec<usize> = (0..detections.len())
            .filter(|&i| {
                detections[i].score >= cfg.low_score && detections[i].score < cfg.high_score
            })
            .collect();

        // 1. Confirmed and lost tracks ↔ confident detections.
        let pool: Vec<usize> = (0..self.tracks.len())
            .filter(|&t| self.tracks[t].state != State::New)
            .collect();
        let matched = self.associate(&pool, &high, detections, cfg.match_iou, &mut assigned);
        // 2. Tracks still unmatched (not lost ones) ↔ low-score detections.
        let rest: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|t| !matched.contains(t) && self.tracks[*t].state == State::Tracked)
            .collect();
        let matched_low = self.associate(&rest, &low, detections, cfg.low_match_iou, &mut assigned);
        // 3. New (unconfirmed) tracks ↔ the confident detections left.
        let fresh: Vec<usize> = (0..self.tracks.len())
            .filter(|&t| self.tracks[t].state == State::New)
            .collect();
        let left: Vec<usize> = high
            .iter()
            .copied()
            .filter(|&d| assigned[d].is_none())
            .collect();
        let matched_new = self.associate(&fresh, &left, detections, 0.3, &mut assigned);

        // Update matched tracks; age the others.
        for (t, track) in self.tracks.iter_mut().enumerate() {
            let hit = matched.contains(&t) || matched_low.contains(&t) || matched_new.contains(&t);
            if hit {
                track.lost_for = 0;
                track.hits += 1;
                track.state = State::Tracked;
            } else {
                track.lost_for += 1;
                if track.state == State::Tracked {
                    track.state = State::Lost;
                }
            }
        }
        // The id each detection got, and whether its track is confirmed (taken before the
        // track list changes below).
        let mut result: Vec<Option<(u64, bool)>> = vec![None; detections.len()];
        for (d, t) in assigned.iter().enumerate() {
            if let Some(t) = *t {
                let track = &mut self.tracks[t];
                track.motion.update(detections[d].bbox);
                result[d] = Some((track.id, track.state == State::Tracked));
            }
        }
        // Unconfirmed tracks that missed a frame, and tracks lost too long, end.
        self.tracks.retain(|t| match t.state {
            State::New => t.lost_for == 0,
            _ => t.lost_for <= cfg.max_lost_frames,
        });
        // Confident detections nobody claimed start new tracks (confirmed at once on the
        // first frame, as ByteTrack does; otherwise after a second sighting).
        let first_frame = self.frame == 1;
        for d in 0..detections.len() {
            if result[d].is_none() && detections[d].score >= cfg.new_track_score {
                self.tracks.push(Track {
                    id: self.next_id,
                    class_id: detections[d].class_id,
                    motion: Motion::new(detections[d].bbox),
                    state: if first_frame {
                        State::Tracked
                    } else {
                        State::New
                    },
                    lost_for: 0,
                    hits: 1,
                });
                result[d] = Some((self.next_id, first_frame));
                self.next_id += 1;
            }
        }
        detections
            .iter()
            .zip(result)
            .map(|(d, r)| Tracked {
                detection: *d,
                track_id: r.filter(|(_, confirmed)| *confirmed).map(|(id, _)| id),
            })
            .collect()
    }

    /// Greedy association by IoU, highest first, same class only. Returns the matched tracks.
    fn associate(
        &self,
        tracks: &[usize],
        dets: &[usize],
        detections: &[Detection],
        min_iou: f32,
        assigned: &mut [Option<usize>],
    ) -> Vec<usize> {
        let mut pairs = Vec::new();
        for &t in tracks {
            let predicted = self.tracks[t].motion.bbox();
            for &d in dets {
                if assigned[d].is_some() || detections[d].class_id != self.tracks[t].class_id {
                    continue;
                }
                let o = iou(&predicted, &detections[d].bbox);
                if o >= min_iou {
                    pairs.push((o, t, d));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut used = Vec::new();
        for (_, t, d) in pairs {
            if used.contains(&t) || assigned[d].is_some() {
                continue;
            }
            used.push(t);
            assigned[d] = Some(t);
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(class_id: usize, score: f32, x: f32, y: f32, w: f32, h: f32) -> Detection {
        Detection {
            class_id,
            score,
            bbox: [x, y, x + w, y + h],
        }
    }

    fn ids(out: &[Tracked]) -> Vec<Option<u64>> {
        out.iter().map(|t| t.track_id).collect()
    }

    #[test]
    fn crossing_objects_keep_their_ids() {
        // Two people walking towards each other along the same line, crossing mid-way.
        let mut tracker = Tracker::new(TrackerConfig::default());
        let mut a_id = None;
        let mut b_id = None;
        for f in 0..40 {
            let t = f as f32;
            let a = det(0, 0.9, 50.0 + 10.0 * t, 100.0, 40.0, 100.0);
            let b = det(0, 0.85, 450.0 - 10.0 * t, 110.0, 40.0, 100.0);
            let out = tracker.update(&[a, b]);
            if f == 0 {
                a_id = out[0].track_id;
                b_id = out[1].track_id;
                assert!(a_id.is_some() && b_id.is_some() && a_id != b_id);
            } else if !(19..=21).contains(&f) {
                // At the crossing the boxes overlap almost fully; everywhere else ids hold.
                assert_eq!(ids(&out), vec![a_id, b_id], "frame {f}");
            }
        }
    }

    #[test]
    fn an_object_hidden_for_a_few_frames_gets_its_id_back() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let first = tracker.update(&[det(2, 0.9, 10.0, 10.0, 50.0, 30.0)])[0].track_id;
        for f in 1..10 {
            tracker.update(&[det(2, 0.9, 10.0 + 5.0 * f as f32, 10.0, 50.0, 30.0)]);
        }
        // Occluded for 5 frames, reappearing where its motion says it should be.
        for _ in 0..5 {
            tracker.update(&[]);
        }
        let back = tracker.update(&[det(2, 0.9, 10.0 + 5.0 * 15.0, 10.0, 50.0, 30.0)]);
        assert_eq!(back[0].track_id, first);
    }

    #[test]
    fn low_score_boxes_extend_tracks_but_never_start_them() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let id = tracker.update(&[det(0, 0.9, 0.0, 0.0, 50.0, 100.0)])[0].track_id;
        // Partly occluded: the detector's score drops, the track continues.
        let out = tracker.update(&[
            det(0, 0.3, 2.0, 0.0, 50.0, 100.0),
            det(0, 0.3, 300.0, 0.0, 50.0, 100.0),
        ]);
        assert_eq!(ids(&out), vec![id, None]);
        // A track ends after max_lost_frames without detections.
        for _ in 0..=TrackerConfig::default().max_lost_frames {
            tracker.update(&[]);
        }
        let out = tracker.update(&[det(0, 0.9, 2.0, 0.0, 50.0, 100.0)]);
        assert_eq!(out[0].track_id, None, "a new, unconfirmed track");
        let out = tracker.update(&[det(0, 0.9, 2.0, 0.0, 50.0, 100.0)]);
        assert!(out[0].track_id.is_some_and(|n| Some(n) != id));
    }

    #[test]
    fn ids_stay_right_when_other_tracks_end_in_the_same_frame() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let a = det(0, 0.9, 0.0, 0.0, 20.0, 20.0);
        let b = det(0, 0.9, 100.0, 0.0, 20.0, 20.0);
        let c = det(0, 0.9, 300.0, 0.0, 20.0, 20.0);
        tracker.update(&[a]);
        // b and c appear (unconfirmed); then b vanishes (its track ends) while c is confirmed.
        assert_eq!(ids(&tracker.update(&[a, b, c])), vec![Some(1), None, None]);
        assert_eq!(ids(&tracker.update(&[a, c])), vec![Some(1), Some(3)]);
        assert_eq!(ids(&tracker.update(&[a, c])), vec![Some(1), Some(3)]);
    }

    #[test]
    fn classes_do_not_swap_ids() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let out = tracker.update(&[det(0, 0.9, 0.0, 0.0, 50.0, 50.0)]);
        let person = out[0].track_id;
        let out = tracker.update(&[det(16, 0.9, 0.0, 0.0, 50.0, 50.0)]);
        assert_ne!(out[0].track_id, person);
    }
}
