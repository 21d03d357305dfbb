use std::process::Command;
use std::time::Duration;

use imgrec_domain::messages::now_ms;
use imgrec_domain::ports::{InstanceStatus, WorkQueue};
use rusqlite::params;

use super::*;
use crate::{SqliteInstanceStatus, SqliteQueue};

const NAME: &str = "app-instance1";

/// A worker that stays a shell (no exec), so that its command line keeps `--name`; it writes
/// `ready` beside `signalled` once it listens for SIGTERM, and `term` in `signalled` if it
/// gets one.
fn worker(signalled: &Path) -> WorkerCommand {
    let script = format!(
        "trap 'echo term > {0}; exit 0' TERM; echo ready > {0}.ready; while :; do sleep 0.05; done",
        signalled.display()
    );
    shell(script)
}

/// A worker that is `script`, run by /bin/sh.
fn shell(script: String) -> WorkerCommand {
    WorkerCommand {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into(), "w".into()],
        env: vec![],
        memory_max_bytes: None,
    }
}

/// What the worker `NAME` says once it is ready.
async fn report_ready(db: &Path) {
    let status = SqliteInstanceStatus::open(db, NAME).unwrap();
    status.report(InstanceState::Running, false).await.unwrap();
}

/// Waits until the fleet has seen its last worker exit.
async fn until_none_left(fleet: &ProcessFleet) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fleet.instances().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the worker's exit was not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fleet(db: &Path, owner: &str, signalled: &Path) -> ProcessFleet {
    ProcessFleet::new(worker(signalled), db, Duration::from_secs(3600), owner).unwrap()
}

/// A pid no process has now.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    child.id()
}

/// Web tier C read the fleet's rows while app-instance1 was a gone web tier's dead worker;
/// before C acts on what it read, the acting scaler (B) forgets that worker, starts a new
/// app-instance1, and the new worker receives a request. C must forget only the incarnation
/// it saw: B's row and the request the new worker holds stay as they are.
#[tokio::test]
async fn a_stale_view_of_a_gone_worker_forgets_only_that_worker() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("queue.sqlite3");
    let b = fleet(&db, "web-b", &dir.path().join("b.term"));
    let c = fleet(&db, "web-c", &dir.path().join("c.term"));
    let conn = crate::db::open(&db).unwrap();
    assert!(crate::lease::try_hold(&conn, "web-instance2", "web-b", Duration::from_secs(60)).unwrap());
    conn.execute(
        "INSERT INTO instances (name, state, busy, updated_at_ms, pid, owner) VALUES (?1, 'running', 1, ?2, ?3, 'web-a')",
        params![NAME, now_ms() as i64 - 1_000, dead_pid()],
    )
    .unwrap();
    let requests = SqliteQueue::open(&db, "requests", None).unwrap();
    let long = Duration::from_secs(600);
    requests.send(b"old").await.unwrap();
    let old_worker = requests.clone().received_by(NAME);
    assert_eq!(old_worker.receive(1, long, Duration::ZERO).await.unwrap().len(), 1);

    let stale = c.processes.rows().unwrap().remove(NAME).unwrap();
    assert!(b.instances().await.unwrap().is_empty(), "the dead worker is forgotten");
    let other = requests.clone().received_by("app-instance2");
    let released = other.receive(10, long, Duration::ZERO).await.unwrap();
    assert_eq!(released.len(), 1, "the dead worker's request is given back at once");
    other.delete(&released[0].receipt).await.unwrap();
    b.launch(NAME).await.unwrap();
    requests.send(b"new").await.unwrap();
    let new_worker = requests.clone().received_by(NAME);
    assert_eq!(new_worker.receive(1, long, Duration::ZERO).await.unwrap().len(), 1);

    assert!(c.processes.foreign(NAME, &stale).is_none());
    let owner: Option<String> = conn
        .query_row("SELECT owner FROM instances WHERE name = ?1", params![NAME], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        owner.as_deref(),
        Some("web-b"),
        "B's row was forgotten with the dead worker's"
    );
    assert!(
        other.receive(10, long, Duration::ZERO).await.unwrap().is_empty(),
        "the new worker's request was given back"
    );
    let seen_by_c = c.instances().await.unwrap();
    assert_eq!(seen_by_c.len(), 1);
    assert_ne!(
        seen_by_c[0].state,
        InstanceState::Stopping,
        "B's worker taken for an orphan"
    );
    b.shutdown().await.unwrap();
}

/// A name's new worker that looks orphaned is asked to stop (SIGTERM) and given its grace,
/// even where the fleet had given up on an earlier worker of that name long ago.
#[tokio::test]
async fn a_new_orphan_under_an_old_orphans_name_is_asked_to_stop_first() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("queue.sqlite3");
    let signalled = dir.path().join("b.term");
    // B holds no lease: to C, its workers are a gone web tier's.
    let b = fleet(&db, "web-b", &signalled);
    let c = fleet(&db, "web-c", &dir.path().join("c.term"));
    let long_ago = Instant::now().checked_sub(STOP_GRACE * 2).unwrap();
    c.processes
        .orphans
        .lock()
        .unwrap()
        .insert(NAME.into(), (dead_pid(), long_ago));
    b.launch(NAME).await.unwrap();
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while read(&signalled.with_extension("term.ready")).trim() != "ready" {
        assert!(Instant::now() < deadline, "the worker did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while read(&signalled).trim() != "term" {
        assert!(Instant::now() < deadline, "the new worker got no SIGTERM");
        let seen = c.instances().await.unwrap();
        assert!(seen.iter().all(|i| i.state != InstanceState::Running));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A worker that exits at once unless `ok` exists beside it (a model that does not load,
/// until it is fixed); once it exists, the worker stays up.
fn worker_until_fixed(ok: &Path) -> WorkerCommand {
    shell(format!(
        "[ -e {} ] || exit 3; while :; do sleep 0.05; done",
        ok.display()
    ))
}

#[tokio::test]
async fn workers_that_exit_before_they_are_ready_hold_back_launches_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("queue.sqlite3");
    let ok = dir.path().join("ok");
    let fleet = ProcessFleet::new(worker_until_fixed(&ok), &db, Duration::from_secs(3600), "web-a").unwrap();

    assert_eq!(fleet.scale_to(1, 4).await.unwrap().launch, [NAME]);
    until_none_left(&fleet).await;
    let failure = fleet
        .launch_failure()
        .await
        .unwrap()
        .expect("the failed start is reported");
    assert!(
        failure
            .reason
            .contains("exit before they are ready (1 in a row, the last with exit status: 3"),
        "{}",
        failure.reason
    );
    assert_eq!(
        fleet.scale_to(1, 4).await.unwrap(),
        FleetChange::default(),
        "launched while held back"
    );

    // The hold after one failure is 1 s; the next launch fails too and doubles it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(fleet.scale_to(1, 4).await.unwrap().launch, [NAME]);
    until_none_left(&fleet).await;
    let failure = fleet.launch_failure().await.unwrap().unwrap();
    assert!(
        failure.reason.contains("(2 in a row,") && failure.reason.contains("wait 2 s"),
        "{}",
        failure.reason
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        fleet.scale_to(1, 4).await.unwrap().launch.is_empty(),
        "launched within the doubled hold"
    );

    // Fixed: the next worker stays up and reports ready, which ends the run of failures.
    std::fs::write(&ok, b"").unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(fleet.scale_to(1, 4).await.unwrap().launch, [NAME]);
    report_ready(&db).await;
    let instances = fleet.instances().await.unwrap();
    assert_eq!(
        instances.iter().map(|i| i.state).collect::<Vec<_>>(),
        [InstanceState::Running]
    );
    assert_eq!(fleet.launch_failure().await.unwrap(), None);
    fleet.shutdown().await.unwrap();
}

/// A worker that says why it cannot start (`InstanceStatus::failed_to_start`, as the app tier
/// does) before it exits: its words end the fleet's launch failure, for this start only.
#[tokio::test]
async fn what_a_worker_said_of_its_failed_start_is_the_fleets_reason() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("queue.sqlite3");
    let go = dir.path().join("go");
    let exits_on_go = shell(format!(
        "while [ ! -e {0} ]; do sleep 0.02; done; rm -f {0}; exit 1",
        go.display()
    ));
    let fleet = ProcessFleet::new(exits_on_go, &db, Duration::from_secs(3600), "web-a").unwrap();
    assert_eq!(fleet.scale_to(1, 4).await.unwrap().launch, [NAME]);
    let said = "cannot load models/x/model.onnx: Protobuf parsing failed.";
    let status = SqliteInstanceStatus::open(&db, NAME).unwrap();
    status.failed_to_start(said).await.unwrap();
    std::fs::write(&go, b"").unwrap();
    until_none_left(&fleet).await;
    let failure = fleet.launch_failure().await.unwrap().expect("reported");
    assert!(
        failure.reason.ends_with(&format!("the last said: {said}")),
        "{}",
        failure.reason
    );

    // The next start under the name says nothing: the earlier words are not its.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(fleet.scale_to(1, 4).await.unwrap().launch, [NAME]);
    std::fs::write(&go, b"").unwrap();
    until_none_left(&fleet).await;
    let failure = fleet.launch_failure().await.unwrap().expect("reported");
    assert!(failure.reason.contains("(2 in a row"), "{}", failure.reason);
    assert!(
        failure.reason.contains("their error is in the log"),
        "{}",
        failure.reason
    );
}

/// A worker that reports ready and exits before the fleet's next look was still a start that
/// worked: the run of failures before it ends, and its exit is a crash to replace, not a hold.
#[tokio::test]
async fn a_worker_ready_and_gone_between_two_looks_ends_the_run_of_failed_starts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("queue.sqlite3");
    let (ok, stop, pid) = (dir.path().join("ok"), dir.path().join("stop"), dir.path().join("pid"));
    let script = format!(
        "[ -e {} ] || exit 3; echo $$ > {}; while [ ! -e {} ]; do sleep 0.02; done; exit 4",
        ok.display(),
        pid.display(),
        stop.display()
    );
    let fleet = ProcessFleet::new(shell(script), &db, Duration::from_secs(3600), "web-a").unwrap();

    assert_eq!(fleet.scale_to(1, 4).await.unwrap().launch, [NAME]);
    until_none_left(&fleet).await;
    assert!(fleet.launch_failure().await.unwrap().is_some());

    std::fs::write(&ok, b"").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(fleet.scale_to(1, 4).await.unwrap().launch, [NAME]);
    // Ready, then gone, with no look by the fleet in between.
    report_ready(&db).await;
    std::fs::write(&stop, b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let exited = || {
        let pid = std::fs::read_to_string(&pid).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
        // A zombie until the fleet reaps it: exited, and not yet seen to.
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    };
    while !exited() {
        assert!(Instant::now() < deadline, "the worker did not exit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    until_none_left(&fleet).await;

    assert_eq!(fleet.launch_failure().await.unwrap(), None);
    assert_eq!(
        fleet.scale_to(1, 4).await.unwrap().launch,
        [NAME],
        "held back after a start that worked"
    );
    fleet.shutdown().await.unwrap();
}
