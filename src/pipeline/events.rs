//! What happened to each track of one source, from its processed frames: it appeared, it was
//! recognised as a known item (or as another one), it ended. Watchers want these rather than a
//! record per frame.

use std::collections::BTreeMap;

use crate::search::{Decision, Region};

/// One thing that happened to a track.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum TrackEvent {
    /// A confirmed track was seen for the first time.
    Appeared {
        /// The track.
        track_id: u64,
        /// Its detector class.
        class_id: usize,
        /// The source's processed frame it appeared in.
        frame: u64,
    },
    /// The gallery named the track as a known item (first, or another than before).
    Recognised {
        /// The track.
        track_id: u64,
        /// The item.
        item: String,
        /// Its aggregated score.
        score: f32,
        /// The frame it was named in.
        frame: u64,
    },
    /// The track was last seen `frame`, and will not be again (lost for longer than the
    /// tracker keeps a track, its source reconnected, or the watch stopped).
    Ended {
        /// The track.
        track_id: u64,
        /// The last frame it was seen in.
        frame: u64,
        /// Frames it was seen in.
        frames_seen: u64,
        /// The item it was last named as, if any.
        item: Option<String>,
    },
}

impl TrackEvent {
    /// The track it is about.
    pub fn track_id(&self) -> u64 {
        match self {
            TrackEvent::Appeared { track_id, .. }
            | TrackEvent::Recognised { track_id, .. }
            | TrackEvent::Ended { track_id, .. } => *track_id,
        }
    }
}

#[derive(Debug)]
struct OpenTrack {
    last_seen: u64,
    frames_seen: u64,
    item: Option<String>,
}

/// One source's open tracks.
#[derive(Debug)]
pub struct TrackEvents {
    open: BTreeMap<u64, OpenTrack>,
    /// Frames a track may be missing before it counts as ended (the tracker's own limit).
    max_lost: u64,
    generation: u64,
}

impl TrackEvents {
    /// Tracks missing for more than `max_lost_frames` processed frames end.
    pub fn new(max_lost_frames: u32) -> TrackEvents {
        TrackEvents {
            open: BTreeMap::new(),
            max_lost: u64::from(max_lost_frames),
            generation: 0,
        }
    }

    /// The events of processed frame `frame` (of source opening `generation`) with these
    /// regions; `decision`: when regions are matched, how an item is named.
    pub fn update(
        &mut self,
        generation: u64,
        frame: u64,
        regions: &[Region],
        decision: Option<&Decision>,
    ) -> Vec<TrackEvent> {
        let mut events = Vec::new();
        if generation != self.generation {
            // A reopened source starts its tracks over (ids are reused): end the old ones.
            events.extend(self.end_all());
            self.generation = generation;
        }
        for r in regions {
            let Some(id) = r.track_id else { continue };
            let track = self.open.entry(id).or_insert_with(|| {
                events.push(TrackEvent::Appeared {
                    track_id: id,
                    class_id: r.detection.class_id,
                    frame,
                });
                OpenTrack {
                    last_seen: frame,
                    frames_seen: 0,
                    item: None,
                }
            });
            track.last_seen = frame;
            track.frames_seen += 1;
            if let Some(known) = decision.and_then(|d| r.known_item(d))
                && track.item.as_deref() != Some(known.label)
            {
                track.item = Some(known.label.to_string());
                events.push(TrackEvent::Recognised {
                    track_id: id,
                    item: known.label.to_string(),
                    score: (known.score * 10_000.0).round() / 10_000.0,
                    frame,
                });
            }
        }
        let max_lost = self.max_lost;
        let gone: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, t)| frame.saturating_sub(t.last_seen) > max_lost)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            events.extend(self.end(id));
        }
        events
    }

    fn end(&mut self, id: u64) -> Option<TrackEvent> {
        self.open.remove(&id).map(|t| TrackEvent::Ended {
            track_id: id,
            frame: t.last_seen,
            frames_seen: t.frames_seen,
            item: t.item,
        })
    }

    /// End every open track (the watch stops).
    pub fn end_all(&mut self) -> Vec<TrackEvent> {
        let ids: Vec<u64> = self.open.keys().copied().collect();
        ids.into_iter().filter_map(|id| self.end(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Detection;

    fn region(track: Option<u64>) -> Region {
        Region::from_tracked(&crate::track::Tracked {
            detection: Detection {
                bbox: [0.0, 0.0, 10.0, 10.0],
                score: 0.9,
                class_id: 16,
            },
            track_id: track,
        })
    }

    #[test]
    fn a_track_appears_once_and_ends_after_the_trackers_limit() {
        let mut ev = TrackEvents::new(2);
        assert_eq!(
            ev.update(1, 0, &[region(None), region(Some(7))], None),
            vec![TrackEvent::Appeared {
                track_id: 7,
                class_id: 16,
                frame: 0
            }]
        );
        assert!(ev.update(1, 1, &[region(Some(7))], None).is_empty());
        // Missing for two frames: still open (the tracker may find it again).
        assert!(ev.update(1, 2, &[], None).is_empty());
        assert!(ev.update(1, 3, &[], None).is_empty());
        assert_eq!(
            ev.update(1, 4, &[], None),
            vec![TrackEvent::Ended {
                track_id: 7,
                frame: 1,
                frames_seen: 2,
                item: None
            }]
        );
        assert!(ev.end_all().is_empty());
    }

    #[test]
    fn a_reconnect_ends_the_old_tracks_before_new_ones_with_the_same_ids() {
        let mut ev = TrackEvents::new(30);
        ev.update(1, 0, &[region(Some(1))], None);
        let events = ev.update(2, 1, &[region(Some(1))], None);
        assert!(matches!(events[0], TrackEvent::Ended { track_id: 1, .. }));
        assert!(matches!(
            events[1],
            TrackEvent::Appeared { track_id: 1, .. }
        ));
        assert!(matches!(
            ev.end_all()[..],
            [TrackEvent::Ended { track_id: 1, .. }]
        ));
    }
}
