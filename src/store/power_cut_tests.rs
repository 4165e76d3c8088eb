//! Power cut at every sync point: the store runs a mixed workload (KV, enable/disable, events,
//! users, tokens) on a backend that records every write and every sync. For each sync point N the
//! test builds the file a power cut right after it could leave — every write before the N-th sync,
//! then a random subset of the writes that followed it (the disk may have reordered them), one of
//! them torn at a sector boundary — opens it as the host would (integrity check included), and
//! checks that it is healthy and holds exactly the state after some operation at or after the last
//! one acknowledged before sync N: nothing acknowledged is lost, nothing half-applied is seen.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::*;

/// One recorded backend call.
#[derive(Debug, Clone)]
enum Call {
    Write(u64, Vec<u8>),
    SetLen(u64),
    Sync,
}

/// An in-memory disk that records what reached it.
#[derive(Debug, Default, Clone)]
struct Recorder {
    bytes: Arc<Mutex<Vec<u8>>>,
    log: Arc<Mutex<Vec<Call>>>,
}

impl Recorder {
    fn syncs(&self) -> usize {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|c| matches!(c, Call::Sync))
            .count()
    }
}

impl redb::StorageBackend for Recorder {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.bytes.lock().expect("bytes").len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let bytes = self.bytes.lock().expect("bytes");
        let start = offset as usize;
        let src = bytes
            .get(start..start + out.len())
            .ok_or_else(|| std::io::Error::other("read past the end"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.bytes.lock().expect("bytes").resize(len as usize, 0);
        self.log.lock().expect("log").push(Call::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.log.lock().expect("log").push(Call::Sync);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut bytes = self.bytes.lock().expect("bytes");
        let start = offset as usize;
        let end = start + data.len();
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[start..end].copy_from_slice(data);
        self.log
            .lock()
            .expect("log")
            .push(Call::Write(offset, data.to_vec()));
        Ok(())
    }
}

fn apply(image: &mut Vec<u8>, call: &Call, torn_at: Option<usize>) {
    match call {
        Call::Write(offset, data) => {
            let data = &data[..torn_at.unwrap_or(data.len()).min(data.len())];
            let start = *offset as usize;
            let end = start + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[start..end].copy_from_slice(data);
        }
        Call::SetLen(len) => image.resize(*len as usize, 0),
        Call::Sync => {}
    }
}

/// A small deterministic PRNG (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Everything the workload can change, read through the public API.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    kv: BTreeMap<String, Vec<(String, String)>>,
    plugins: BTreeMap<String, PluginRecord>,
    events: Vec<(String, EventKind, u64)>,
    users: Vec<Option<UserRecord>>,
    tokens: Vec<String>,
}

const PLUGINS: [&str; 3] = ["pa", "pb", "pc"];
const USERS: [&str; 2] = ["admin", "viewer1"];

fn snapshot(store: &Store) -> Snapshot {
    let mut kv = BTreeMap::new();
    for p in PLUGINS {
        let (keys, _) = store.kv_list(p, "", None, 1000).expect("list");
        let rows = keys
            .into_iter()
            .map(|k| {
                let v = store.kv_get(p, &k).expect("get").expect("listed key");
                (k, v)
            })
            .collect();
        kv.insert(p.to_owned(), rows);
    }
    Snapshot {
        kv,
        plugins: store.plugin_records().expect("plugins"),
        events: store
            .events(None, 1000)
            .expect("events")
            .into_iter()
            .map(|e| (e.plugin, e.kind, e.seq))
            .collect(),
        users: USERS.iter().map(|u| store.user(u).expect("user")).collect(),
        tokens: store
            .tokens()
            .expect("tokens")
            .into_iter()
            .map(|t| t.name)
            .collect(),
    }
}

async fn step(store: &Store, i: usize) {
    let p = PLUGINS[i % PLUGINS.len()];
    match i % 7 {
        0 => store
            .kv_set(
                p,
                &format!("k{}", i % 5),
                &"x".repeat(50 + (i * 397) % 3000),
            )
            .await
            .expect("kv_set"),
        1 => {
            store
                .kv_delete(p, &format!("k{}", (i + 2) % 5))
                .await
                .expect("kv_delete");
        }
        2 => store
            .set_plugin(
                p,
                PluginRecord {
                    enabled: i.is_multiple_of(2),
                    auto_disabled: None,
                },
                Some(NewEvent {
                    kind: if i.is_multiple_of(2) {
                        "enabled"
                    } else {
                        "disabled"
                    }
                    .into(),
                    message: format!("step {i}"),
                    details: serde_json::json!({}),
                }),
            )
            .await
            .expect("set_plugin"),
        3 => {
            store
                .record_event(
                    p,
                    NewEvent {
                        kind: "started".into(),
                        message: format!("step {i}"),
                        details: serde_json::json!({"i": i}),
                    },
                )
                .await
                .expect("record_event");
        }
        4 => store
            .put_user(UserRecord {
                name: USERS[i % 2].into(),
                password_hash: format!("hash-{i}"),
                role: Role::Admin,
                generation: i as u64,
            })
            .await
            .expect("put_user"),
        5 => store
            .put_token(
                &format!("tokenhash{}", i % 3),
                TokenRecord {
                    name: format!("t{}", i % 3),
                    role: Role::Viewer,
                    created: crate::clock::now(),
                },
            )
            .await
            .expect("put_token"),
        _ => {
            store
                .revoke_token(&format!("t{}", (i + 1) % 3))
                .await
                .expect("revoke_token");
        }
    }
}

fn temp(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("toru-pc-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

#[tokio::test(flavor = "current_thread")]
async fn every_power_cut_keeps_every_acknowledged_write() {
    const STEPS: usize = 140;
    const CUTS_PER_SYNC: usize = 3;
    let work = temp("work");
    let disk = Recorder::default();
    let store = Store::open_on_backend(&work.join("data"), disk.clone(), StoreOptions::default());
    let first_sync = disk.syncs();
    let mut states = vec![snapshot(&store)];
    // acked_by[j] = syncs that had happened when operation j+1 was acknowledged.
    let mut acked_by = Vec::new();
    for i in 0..STEPS {
        step(&store, i).await;
        acked_by.push(disk.syncs());
        states.push(snapshot(&store));
    }
    store.close();
    drop(store);
    let log = disk.log.lock().expect("log").clone();
    let sync_positions: Vec<usize> = log
        .iter()
        .enumerate()
        .filter_map(|(i, c)| matches!(c, Call::Sync).then_some(i))
        .collect();
    assert!(sync_positions.len() > STEPS, "each commit syncs");

    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut checked = 0;
    for n in first_sync..=sync_positions.len() {
        // Operations acknowledged once `n` syncs had happened.
        let acked = acked_by.iter().filter(|&&s| s <= n).count();
        let durable_end = sync_positions[n - 1] + 1;
        let pending_end = sync_positions.get(n).copied().unwrap_or(log.len());
        let mut durable = Vec::new();
        for call in &log[..durable_end] {
            apply(&mut durable, call, None);
        }
        let pending = &log[durable_end..pending_end];
        for cut in 0..CUTS_PER_SYNC {
            let mut image = durable.clone();
            let torn = (!pending.is_empty()).then(|| rng.below(pending.len() as u64) as usize);
            for (k, call) in pending.iter().enumerate() {
                if Some(k) == torn {
                    let at = match call {
                        Call::Write(_, data) => {
                            (rng.below((data.len() / 512 + 1) as u64) as usize) * 512
                        }
                        _ => 0,
                    };
                    apply(&mut image, call, Some(at));
                } else if rng.below(2) == 0 {
                    apply(&mut image, call, None);
                }
            }
            let dir = temp("cut");
            let data = dir.join("data");
            std::fs::create_dir_all(&data).expect("mkdir");
            std::fs::write(data.join("toru.redb"), &image).expect("write image");
            let store = Store::open(&data, StoreOptions::default()).expect("open");
            assert_eq!(
                store.health(),
                StoreHealth::Ok,
                "cut after sync {n} (variant {cut}) must open healthy"
            );
            let got = snapshot(&store);
            let matches: Vec<usize> = (acked..=(acked + 1).min(STEPS))
                .filter(|&k| states[k] == got)
                .collect();
            assert!(
                !matches.is_empty(),
                "cut after sync {n} (variant {cut}): {acked} operations were acknowledged, but the \
                 file holds a state that is neither after operation {acked} nor after the next \
                 one:\n{got:#?}"
            );
            drop(store);
            let _ = std::fs::remove_dir_all(&dir);
            checked += 1;
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "{checked} power cuts over {} sync points",
        sync_positions.len()
    );
}
