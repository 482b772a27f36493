//! A throw-away ext4 filesystem on a loop device, for tests that cut the
//! power under a running server.
//!
//! The power cut is ext4's own shutdown ioctl with "no log flush"
//! (`EXT4_IOC_SHUTDOWN`, `EXT4_GOING_FLAGS_NOLOGFLUSH`, what xfstests'
//! `godown` uses to simulate a crash): from that instant the filesystem
//! issues no more writes to the device; dirty pages and the running journal
//! transaction are lost, exactly as if the machine lost power, and every
//! later write or fsync fails with EIO. Device-mapper (`dm-flakey`) would be
//! the textbook tool, but kernels built without `CONFIG_MD` (like this
//! machine's) have no device-mapper at all.
//!
//! Everything global carries a unique name (image file, mount point, loop
//! device found with `losetup --find`) and is removed on drop, even after a
//! panic.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `_IOR('X', 125, __u32)`: `EXT4_IOC_SHUTDOWN` (XFS's `GOINGDOWN`).
const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
/// Shut down without flushing the journal: a power cut.
const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;

/// An ext4 filesystem in an image file under `/var/tmp`, on a loop device,
/// mounted on a fresh directory.
pub struct LoopFs {
    image: PathBuf,
    mnt: PathBuf,
    dev: Option<String>,
    mounted: bool,
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
            dev: None,
            mounted: false,
        };
        let f = std::fs::File::create(&fs.image).unwrap();
        f.set_len(size_mib << 20).unwrap();
        drop(f);
        run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&fs.image));
        std::fs::create_dir(&fs.mnt).unwrap();
        fs.attach();
        fs.mount();
        fs
    }

    /// Where the filesystem is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mnt
    }

    fn attach(&mut self) {
        let dev = run_ok(
            Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&self.image),
        );
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        self.dev = Some(dev);
    }

    fn detach(&mut self) {
        if let Some(dev) = self.dev.take() {
            let _ = run(Command::new("losetup").arg("-d").arg(&dev));
        }
    }

    fn mount(&mut self) {
        let dev = self.dev.clone().expect("attached");
        run_ok(
            Command::new("mount")
                .args(["-t", "ext4"])
                .arg(&dev)
                .arg(&self.mnt),
        );
        self.mounted = true;
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

    /// After [`Self::power_cut`] (and once nothing has files open on it):
    /// unmount, detach the loop device, attach the image again as a fresh
    /// device, check it with `e2fsck -fy` (replaying the journal) and mount
    /// it. Returns e2fsck's output; panics if e2fsck left errors (exit >= 4).
    pub fn reboot(&mut self) -> String {
        self.unmount();
        self.detach();
        self.attach();
        let dev = self.dev.clone().expect("attached");
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
