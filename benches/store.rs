//! Task store benchmarks: the durable write that precedes every RunTask
//! (put + flush), a point read, and the full listing a reconcile pass starts
//! with, over 1,000 records. The sled database lives under Cargo's target
//! temp directory, on a real disk, so the flush is a real fsync.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use nomad_driver_ecs::store::record::RunParams;
use nomad_driver_ecs::store::{
    Desired, MemoryStore, Observation, SledStore, Slot, Store, TaskRecord,
};

const RECORDS: usize = 1_000;

/// A record as it looks mid-life: ARN and observation present.
fn running_task(i: usize) -> TaskRecord {
    let alloc_id = format!("{i:08x}-1c2d-4e5f-8a9b-0c1d2e3f4a5b");
    TaskRecord {
        task_id: format!("{alloc_id}/server/{i:08x}"),
        alloc_id: alloc_id.clone(),
        task_name: "server".into(),
        slot: Slot {
            namespace: "default".into(),
            job: "web".into(),
            group: "api".into(),
            alloc_index: u32::try_from(i).unwrap_or(u32::MAX),
            task: "server".into(),
        },
        desired: Desired::Running,
        client_token: format!("{alloc_id}-server-1"),
        cluster: "default".into(),
        region: "us-east-1".into(),
        task_definition: "web:3".into(),
        arn: Some(format!(
            "arn:aws:ecs:us-east-1:123456789012:task/default/{i:032x}"
        )),
        observed: Some(Observation {
            last_status: "RUNNING".into(),
            desired_status: "RUNNING".into(),
            owner_alloc: Some(alloc_id),
            observed_at_ms: 1_700_000_000_000,
            ..Observation::default()
        }),
        exit: None,
        created_ms: 1_700_000_000_000,
        updated_ms: 1_700_000_000_000,
        started_ms: Some(1_700_000_001_000),
        run: RunParams {
            launch_type: Some("FARGATE".into()),
            subnets: vec!["subnet-0a1b2c3d".into()],
            security_groups: vec!["sg-0a1b2c3d".into()],
            assign_public_ip: Some(false),
        },
        run_requested_ms: Some(1_700_000_000_100),
        run_attempts: 1,
        start_error: None,
        stop_requested_ms: None,
        last_error: None,
    }
}

fn filled(store: &impl Store) -> Vec<TaskRecord> {
    let records: Vec<_> = (0..RECORDS).map(running_task).collect();
    for rec in &records {
        store.put(rec).expect("put");
    }
    records
}

fn sled_store() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let store = SledStore::open(dir.path()).expect("open");
    (dir, store)
}

fn bench_sled(c: &mut Criterion) {
    let (_dir, store) = sled_store();
    let records = filled(&store);
    let mut group = c.benchmark_group("sled");

    // Every put must change the value: sled skips writing (and so flushing)
    // a value identical to the stored one, which would measure nothing.
    let mut records = records;
    let mut i = 0;
    group.bench_function("put_and_flush", |b| {
        b.iter(|| {
            i = (i + 1) % RECORDS;
            records[i].updated_ms += 1;
            store.put(black_box(&records[i])).expect("put");
        })
    });
    let mut i = 0;
    group.bench_function("get", |b| {
        b.iter(|| {
            i = (i + 7) % RECORDS;
            black_box(store.get(&records[i].task_id).expect("get"))
        })
    });
    group.bench_function("list_1000", |b| {
        b.iter(|| {
            let listing = store.list().expect("list");
            assert_eq!(listing.records.len(), RECORDS);
            black_box(listing)
        })
    });
    group.finish();
    eprintln!(
        "sled: {RECORDS} records occupy {} bytes on disk",
        store.size_on_disk()
    );
}

fn bench_memory(c: &mut Criterion) {
    let store = MemoryStore::new();
    let records = filled(&store);
    let mut group = c.benchmark_group("memory");
    let mut i = 0;
    let mut records = records;
    group.bench_function("put", |b| {
        b.iter(|| {
            i = (i + 1) % RECORDS;
            records[i].updated_ms += 1;
            store.put(black_box(&records[i])).expect("put");
        })
    });
    group.bench_function("list_1000", |b| {
        b.iter(|| black_box(store.list().expect("list")))
    });
    group.finish();
}

criterion_group!(benches, bench_sled, bench_memory);
criterion_main!(benches);
