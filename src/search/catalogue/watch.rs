//! Changes to a catalogue made elsewhere, as the server announces them: a connection of its own
//! that LISTENs on [`CHANGE_CHANNEL`] (every change's transaction NOTIFYs it with the catalogue's
//! schema), on a thread that reconnects with back-off while the server is away. Nothing polls
//! the server; an idle connection is checked every [`CHECK_EVERY`] so that a server that went
//! away quietly is noticed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;

use super::{CHANGE_CHANNEL, CatalogueError, CatalogueUrl, connect};
use crate::search::store::{ChangeWatch, WatchEvent};

/// How long one wait for announcements lasts before the thread looks at `stop`.
const WAIT: Duration = Duration::from_millis(200);
/// How often an idle listening connection is checked.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Reconnection delays: from the first to the ceiling, doubling.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(4);

#[derive(Default)]
struct Seen {
    changed: bool,
    unreachable: Option<String>,
}

/// A catalogue's watch; the thread ends soon after it is dropped.
pub struct PgWatch {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
}

impl PgWatch {
    /// Start listening for changes of `url`'s catalogue.
    pub fn start(url: &CatalogueUrl) -> std::io::Result<PgWatch> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, url) = (seen.clone(), stop.clone(), url.clone());
        std::thread::Builder::new()
            .name("arvis-catalogue-watch".into())
            .spawn(move || listen(&url, &s, &st))?;
        Ok(PgWatch { seen, stop })
    }
}

impl Drop for PgWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl ChangeWatch for PgWatch {
    fn poll(&mut self) -> WatchEvent {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(why) = &seen.unreachable {
            return WatchEvent::Unreachable(why.clone());
        }
        if std::mem::take(&mut seen.changed) {
            WatchEvent::Changed
        } else {
            WatchEvent::Quiet
        }
    }
}

fn listen(url: &CatalogueUrl, seen: &Mutex<Seen>, stop: &AtomicBool) {
    let update =
        |f: &dyn Fn(&mut Seen)| f(&mut seen.lock().unwrap_or_else(PoisonError::into_inner));
    let mut delay = RETRY_FIRST;
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let connected = connect(url).and_then(|mut db| {
            match db.batch_execute(&format!("LISTEN {CHANGE_CHANNEL}")) {
                Ok(()) => Ok(Some(db)),
                // A server that answers but will not LISTEN (a hot standby replica): no live
                // updates from it, which is no reason to call it unreachable.
                Err(e) if e.as_db_error().is_some() => {
                    tracing::warn!(
                        "catalogue {}: no change announcements ({}); windows see changes when they reopen it",
                        url.masked(),
                        e.as_db_error().map_or("", |d| d.message())
                    );
                    Ok(None)
                }
                Err(e) => Err(super::classify(url, e)),
            }
        });
        let mut db = match connected {
            Ok(Some(db)) => db,
            Ok(None) => return,
            Err(e) => {
                let why = reason(&e);
                update(&|s| s.unreachable = Some(why.clone()));
                sleep_unless_stopped(delay, stop);
                delay = (delay * 2).min(RETRY_MAX);
                continue;
            }
        };
        delay = RETRY_FIRST;
        // After an absence, announcements may have been missed: say it changed.
        let again = !first;
        update(&|s| {
            s.unreachable = None;
            s.changed |= again;
        });
        first = false;
        let mut checked = Instant::now();
        let lost = loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let mut notes = db.notifications();
            let mut it = notes.timeout_iter(WAIT);
            let mut broken: Option<String> = None;
            loop {
                match it.next() {
                    Ok(Some(n)) if n.payload() == url.schema => update(&|s| s.changed = true),
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        broken = Some(e.to_string());
                        break;
                    }
                }
            }
            drop(it);
            drop(notes);
            if broken.is_none() && checked.elapsed() >= CHECK_EVERY {
                checked = Instant::now();
                broken = db.is_valid(CHECK_EVERY).err().map(|e| e.to_string());
            }
            if let Some(why) =
                broken.or_else(|| db.is_closed().then(|| String::from("connection closed")))
            {
                break why;
            }
        };
        let why = crate::util::mask_urls(&lost);
        update(&|s| s.unreachable = Some(format!("{} ({why})", url.server())));
    }
}

fn reason(e: &CatalogueError) -> String {
    match e {
        CatalogueError::Unreachable { server, reason, .. }
        | CatalogueError::Lost { server, reason } => {
            format!("{server} ({reason})")
        }
        other => other.to_string(),
    }
}

fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
}
