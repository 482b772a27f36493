//! Live migration of a VM between two `vm` drivers, the two ends of a move
//! as a source and a target agent run them (the real task shim of this
//! `taba` binary, real cgroups, QEMU 10 under TCG, the counting test
//! guest), over loopback. Needs root and QEMU; fails loudly without them.

mod common;

use common::vm::*;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};
use taba_driver::migrate::{Migratable, MigrationPolicy};
use taba_driver::vm::VmDriver;
use taba_driver::{Driver, TaskConfig, TaskHandle};
use taba_types::vm::VmAccel;

/// Start the source VM and wait until it has counted a while.
fn start_counting(p: &Pair) -> (TaskConfig, TaskHandle) {
    let cfg = task(&p.root, &p.cgroups, "source", "taba.count", 256);
    let h = p.a.start(&cfg).expect("the source VM starts");
    wait_until(
        "the source guest counting",
        Duration::from_secs(120),
        || counts(&console(&cfg)).last().copied().unwrap_or(0) >= 10,
        || console(&cfg),
    );
    (cfg, h)
}

fn end(d: &VmDriver, h: &TaskHandle) {
    let _ = d.stop(h, libc::SIGKILL, Duration::from_secs(10));
    let _ = d.wait(h);
    let _ = d.destroy(h);
}

#[test]
fn root_vm_live_migration_keeps_the_guest_counting() {
    let p = pair();
    let (src_cfg, src) = start_counting(&p);
    let info = p.a.source_info(&src).unwrap();
    assert_eq!(info.accel, VmAccel::Tcg);
    let dst_cfg = task(&p.root, &p.cgroups, "target", "taba.count", 256);
    let (dst, incoming) =
        p.b.prepare_incoming(&dst_cfg, IpAddr::V4(Ipv4Addr::LOCALHOST), &info)
            .expect("the target waits for the VM");
    assert_ne!(incoming.addr.port(), 0);
    let mut updates = 0;
    let started = Instant::now();
    let stats =
        p.a.migrate_out(&src, &incoming, &MigrationPolicy::default(), &mut |_| {
            updates += 1;
            ControlFlow::Continue(())
        })
        .unwrap_or_else(|e| {
            panic!(
                "{}; target stderr: {:?}",
                taba_types::error_chain(&e),
                std::fs::read_to_string(dst_cfg.log_dir.join("guest.stderr.0"))
            )
        });
    let elapsed = started.elapsed();
    eprintln!("migration: {stats:?} in {elapsed:?}, {updates} progress updates");
    assert!(stats.transferred > 0, "{stats:?}");
    p.b.finish_incoming(&dst, Duration::from_secs(30)).unwrap();

    // The source QEMU ended cleanly; the target goes on counting where the
    // source stopped, without booting again.
    let exit = p.a.wait(&src).unwrap();
    assert_eq!(exit.exit_code, Some(0), "{exit:?}");
    assert!(!p.a.inspect(&src).unwrap());
    let last_on_source = counts(&console(&src_cfg)).last().copied().unwrap();
    wait_until(
        "the target guest counting on",
        Duration::from_secs(60),
        || counts(&console(&dst_cfg)).last().copied().unwrap_or(0) > last_on_source + 10,
        || console(&dst_cfg),
    );
    let target_log = console(&dst_cfg);
    let target_counts = counts(&target_log);
    assert!(
        target_counts[0] > 1 && target_counts[0] <= last_on_source + 5,
        "the target's first count {} does not follow the source's last {last_on_source}",
        target_counts[0]
    );
    assert!(
        target_counts.windows(2).all(|w| w[1] == w[0] + 1),
        "the count skipped or restarted on the target: {target_counts:?}"
    );
    assert!(
        !target_log.contains("taba-guest: init ok"),
        "the target booted"
    );
    // Power down the target.
    p.b.stop(&dst, libc::SIGTERM, Duration::from_secs(30))
        .unwrap();
    let exit = p.b.wait(&dst).unwrap();
    assert_eq!(exit.exit_code, Some(0), "{exit:?}");
    assert!(console(&dst_cfg).contains("taba-guest: power button"));
    p.a.destroy(&src).unwrap();
    p.b.destroy(&dst).unwrap();
}

#[test]
fn root_vm_migration_to_a_dead_target_leaves_the_source_running() {
    let p = pair();
    let (src_cfg, src) = start_counting(&p);
    let info = p.a.source_info(&src).unwrap();
    let dst_cfg = task(&p.root, &p.cgroups, "target", "taba.count", 256);
    let (dst, incoming) =
        p.b.prepare_incoming(&dst_cfg, IpAddr::V4(Ipv4Addr::LOCALHOST), &info)
            .unwrap();
    // The target dies before the source sends anything.
    p.b.abort_incoming(&dst).unwrap();
    assert!(!p.b.inspect(&dst).unwrap());
    let e =
        p.a.migrate_out(&src, &incoming, &MigrationPolicy::default(), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap_err();
    let e = taba_types::error_chain(&e);
    assert!(e.contains("migration"), "{e}");
    // The source runs on and keeps counting.
    assert!(p.a.inspect(&src).unwrap());
    let before = counts(&console(&src_cfg)).last().copied().unwrap();
    wait_until(
        "the source still counting",
        Duration::from_secs(60),
        || counts(&console(&src_cfg)).last().copied().unwrap_or(0) > before + 5,
        || console(&src_cfg),
    );
    end(&p.a, &src);
}

#[test]
fn root_vm_live_migration_moves_the_local_disk() {
    let p = pair();
    let with_disk = |side: &str| {
        let mut cfg = task(&p.root, &p.cgroups, side, "taba.disk taba.count", 256);
        cfg.task.disks = vec![taba_types::vm::VmDisk {
            image: None,
            format: None,
            size: Some(taba_types::ByteSize(16 << 20)),
        }];
        cfg
    };
    let src_cfg = with_disk("source");
    let src = p.a.start(&src_cfg).expect("the source VM starts");
    wait_until(
        "the source guest wrote to its disk and counts",
        Duration::from_secs(120),
        || {
            let c = console(&src_cfg);
            c.contains("taba-disk: 1 boots") && counts(&c).last().copied().unwrap_or(0) >= 10
        },
        || console(&src_cfg),
    );
    let info = p.a.source_info(&src).unwrap();
    let dst_cfg = with_disk("target");
    let (dst, incoming) =
        p.b.prepare_incoming(&dst_cfg, IpAddr::V4(Ipv4Addr::LOCALHOST), &info)
            .expect("the target waits for the VM and its disk");
    assert!(incoming.disks.is_some() && incoming.disk_count == 1);
    let stats =
        p.a.migrate_out(&src, &incoming, &MigrationPolicy::default(), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap_or_else(|e| panic!("{}", taba_types::error_chain(&e)));
    eprintln!("migration with a disk: {stats:?}");
    p.b.finish_incoming(&dst, Duration::from_secs(30)).unwrap();
    assert_eq!(p.a.wait(&src).unwrap().exit_code, Some(0));
    let last_on_source = counts(&console(&src_cfg)).last().copied().unwrap();
    wait_until(
        "the target guest counting on",
        Duration::from_secs(60),
        || counts(&console(&dst_cfg)).last().copied().unwrap_or(0) > last_on_source + 5,
        || console(&dst_cfg),
    );
    assert!(!console(&dst_cfg).contains("taba-guest: init ok"));
    let stderr =
        std::fs::read_to_string(dst_cfg.log_dir.join("guest.stderr.0")).unwrap_or_default();
    assert!(!stderr.contains("conflict"), "target QEMU: {stderr}");
    // Power the target down and boot it again from its disk: the boot the
    // source recorded there came along.
    p.b.stop(&dst, libc::SIGTERM, Duration::from_secs(30))
        .unwrap();
    assert_eq!(p.b.wait(&dst).unwrap().exit_code, Some(0));
    p.b.destroy(&dst).unwrap();
    let again =
        p.b.start(&dst_cfg)
            .expect("the target boots from the moved disk");
    wait_until(
        "the second boot recorded on the moved disk",
        Duration::from_secs(120),
        || console(&dst_cfg).contains("taba-disk: 2 boots"),
        || console(&dst_cfg),
    );
    end(&p.b, &again);
    p.a.destroy(&src).unwrap();
}
