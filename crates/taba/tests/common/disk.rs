//! A throw-away ext4 filesystem on a loop device, for tests that cut the
//! power under a running server. Two ways to cut it:
//!
//! - [`LoopFs::create_on_dm_flakey`] puts a `dm-flakey` device between the
//!   loop device and the filesystem, passing every write until
//!   [`LoopFs::cut_writes`] swaps its table for one that drops (or fails)
//!   every write from then on, as xfstests' `dmflakey` helper does. This
//!   is the real thing; it needs device-mapper, which this machine's kernel
//!   lacks (no `CONFIG_MD`), so those tests run in the QEMU guest of
//!   `scripts/guest.sh`, whose Debian kernel has the modules.
//! - [`LoopFs::power_cut`] (the substitute on kernels without
//!   device-mapper) is ext4's own shutdown ioctl with "no log flush"
//!   (`EXT4_IOC_SHUTDOWN`, `EXT4_GOING_FLAGS_NOLOGFLUSH`, what xfstests'
//!   `godown` uses): from that instant the filesystem issues no more writes
//!   to the device; dirty pages and the running journal transaction are
//!   lost, and every later write or fsync fails with EIO.
//!
//! Everything global carries a unique name (image file, mount point,
//! device-mapper name, loop device found with `losetup --find`) and is
//! removed on drop, even after a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `_IOR('X', 125, __u32)`: `EXT4_IOC_SHUTDOWN` (XFS's `GOINGDOWN`).
const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
/// Shut down without flushing the journal: a power cut.
const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;

/// What a `dm-flakey` device does with writes once [`LoopFs::cut_writes`]
/// was called (reads always pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flakey {
    /// Writes "succeed" and are thrown away: a disk whose power went, seen
    /// from a machine that has not noticed yet.
    DropWrites,
    /// Writes fail with EIO: a dead disk.
    ErrorWrites,
}

impl Flakey {
    fn feature(self) -> &'static str {
        match self {
            Flakey::DropWrites => "drop_writes",
            Flakey::ErrorWrites => "error_writes",
        }
    }
}

/// An ext4 filesystem in an image file under `/var/tmp`, on a loop device
/// (and optionally a `dm-flakey` device over it), mounted on a fresh
/// directory.
pub struct LoopFs {
    image: PathBuf,
    mnt: PathBuf,
    sectors: u64,
    /// The loop device.
    dev: Option<String>,
    /// The device-mapper name, for a filesystem on dm-flakey.
    flakey: Option<String>,
    /// Whether the device-mapper device exists now.
    flakey_up: bool,
    mounted: bool,
}

/// `dmsetup` without udev (the guest runs none): it makes and removes the
/// `/dev/mapper` nodes itself.
fn dmsetup() -> Command {
    let mut c = Command::new("dmsetup");
    c.env("DM_DISABLE_UDEV", "1");
    c
}

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (scripts/setup.sh installs it)"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl LoopFs {
    /// Make a `size_mib` MiB ext4 image, attach and mount it.
    pub fn create(size_mib: u64) -> LoopFs {
        Self::make(size_mib, false)
    }

    /// [`Self::create`] with a `dm-flakey` device between the loop device
    /// and the filesystem, passing every write until [`Self::cut_writes`].
    /// Fails loudly without device-mapper.
    pub fn create_on_dm_flakey(size_mib: u64) -> LoopFs {
        assert!(
            Path::new("/dev/mapper/control").exists(),
            "no device-mapper here (/dev/mapper/control): run this test in \
             scripts/guest.sh's guest, whose kernel loads dm-mod and dm-flakey"
        );
        Self::make(size_mib, true)
    }

    fn make(size_mib: u64, flakey: bool) -> LoopFs {
        super::require_root();
        let name = format!(
            "taba-loopfs-{}-{:x}",
            std::process::id(),
            super::unique_seed(0) & 0xffff_ffff
        );
        let image = Path::new("/var/tmp").join(format!("{name}.img"));
        let mnt = Path::new("/var/tmp").join(format!("{name}.mnt"));
        let mut fs = LoopFs {
            image,
            mnt,
            sectors: size_mib << 11,
            dev: None,
            flakey: flakey.then(|| name.clone()),
            flakey_up: false,
            mounted: false,
        };
        let f = std::fs::File::create(&fs.image).unwrap();
        f.set_len(size_mib << 20).unwrap();
        drop(f);
        std::fs::create_dir(&fs.mnt).unwrap();
        fs.attach();
        // Made through the stack, so the test also proves the device passes
        // writes before the cut.
        run_ok(
            Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(fs.blockdev()),
        );
        fs.mount();
        fs
    }

    /// Where the filesystem is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mnt
    }

    /// The device the filesystem is on: the dm-flakey device, or the loop
    /// device.
    fn blockdev(&self) -> String {
        match &self.flakey {
            Some(name) => format!("/dev/mapper/{name}"),
            None => self.dev.clone().expect("attached"),
        }
    }

    /// A dm-flakey table over the loop device: writes pass (`None`: "up"
    /// for a day, never "down"), or every write is dropped or failed from
    /// now on ("up" 0 s, "down" a day, with the feature).
    fn flakey_table(&self, cut: Option<Flakey>) -> String {
        let dev = self.dev.as_deref().expect("attached");
        match cut {
            None => format!("0 {} flakey {dev} 0 86400 0", self.sectors),
            Some(f) => format!(
                "0 {} flakey {dev} 0 0 86400 1 {}",
                self.sectors,
                f.feature()
            ),
        }
    }

    fn attach(&mut self) {
        let dev = run_ok(
            Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&self.image),
        );
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        self.dev = Some(dev);
        if let Some(name) = self.flakey.clone() {
            let table = self.flakey_table(None);
            run_ok(dmsetup().args(["create", "--noudevsync", &name, "--table", &table]));
            self.flakey_up = true;
        }
    }

    fn detach(&mut self) {
        if let (Some(name), true) = (&self.flakey, self.flakey_up) {
            let out = run(dmsetup().args(["remove", "--noudevsync", "--retry", name]));
            if out.status.success() {
                self.flakey_up = false;
            } else {
                eprintln!(
                    "dmsetup remove {name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        if let Some(dev) = self.dev.take() {
            let _ = run(Command::new("losetup").arg("-d").arg(&dev));
        }
    }

    fn mount(&mut self) {
        run_ok(
            Command::new("mount")
                .args(["-t", "ext4"])
                .arg(self.blockdev())
                .arg(&self.mnt),
        );
        self.mounted = true;
    }

    /// Cut the power under a filesystem made by [`Self::create_on_dm_flakey`]:
    /// load a table that drops or fails every write, and swap it in
    /// (suspend without freezing the filesystem, so nothing is flushed on
    /// the way, then resume). Every write the device completed before this
    /// call is in the image; none issued after it returns is.
    pub fn cut_writes(&self, how: Flakey) {
        let name = self.flakey.as_deref().expect("a filesystem on dm-flakey");
        let table = self.flakey_table(Some(how));
        run_ok(dmsetup().args(["load", name, "--table", &table]));
        run_ok(dmsetup().args(["suspend", "--noudevsync", "--nolockfs", name]));
        run_ok(dmsetup().args(["resume", "--noudevsync", name]));
    }

    fn unmount(&mut self) {
        if self.mounted {
            let out = run(Command::new("umount").arg(&self.mnt));
            if !out.status.success() {
                let _ = run(Command::new("umount").arg("-l").arg(&self.mnt));
            }
            self.mounted = false;
        }
    }

    /// Cut the power under the filesystem now: no write issued after this
    /// reaches the device.
    pub fn power_cut(&self) {
        let dir = std::fs::File::open(&self.mnt).unwrap();
        let flags: u32 = EXT4_GOING_FLAGS_NOLOGFLUSH;
        use std::os::fd::AsRawFd;
        // SAFETY: ioctl on an fd we own, with a pointer to a live u32 as
        // EXT4_IOC_SHUTDOWN expects; the kernel only reads it.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_SHUTDOWN, &flags) };
        assert_eq!(
            rc,
            0,
            "EXT4_IOC_SHUTDOWN failed: {}",
            std::io::Error::last_os_error()
        );
    }

    /// After [`Self::power_cut`] or [`Self::cut_writes`] (and once nothing
    /// has files open on it): unmount, tear the devices down, attach the
    /// image again as fresh devices (dm-flakey passing writes again), check
    /// it with `e2fsck -fy` (replaying the journal) and mount it. Returns
    /// e2fsck's output; panics if e2fsck left errors (exit >= 4).
    pub fn reboot(&mut self) -> String {
        self.unmount();
        self.detach();
        assert!(
            !self.flakey_up,
            "the dm-flakey device {:?} could not be removed",
            self.flakey
        );
        self.attach();
        let dev = self.blockdev();
        let out = run(Command::new("e2fsck").args(["-f", "-y"]).arg(&dev));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let code = out.status.code().unwrap_or(8);
        assert!(code < 4, "e2fsck left errors (exit {code}):\n{text}");
        self.mount();
        text
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        self.unmount();
        self.detach();
        let _ = std::fs::remove_dir(&self.mnt);
        let _ = std::fs::remove_file(&self.image);
    }
}
