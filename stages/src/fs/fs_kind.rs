//! What a filesystem's kind (`statfs`'s magic number) says about what it
//! can be trusted with: one list of kinds, asked by the stages that care.

const NFS: u64 = 0x6969;
const SMB: u64 = 0x517b;
const CIFS: u64 = 0xff53_4d42;
const SMB2: u64 = 0xfe53_4d42;
const CEPH: u64 = 0x00c3_6400;
const AFS: u64 = 0x5346_414f;
const V9FS: u64 = 0x0102_1997;
const FUSE: u64 = 0x6573_5546;
const OVERLAY: u64 = 0x794c_7630;
const MSDOS: u64 = 0x4d44;
const EXFAT: u64 = 0x2011_bab0;
const NTFS: u64 = 0x5346_544e;
const NTFS3: u64 = 0x7366_746e;

/// Whether every write moves a file's ctime, which the digest cache relies
/// on (a cached digest is reused only while the file's identity, size,
/// mtime and ctime are unchanged). FUSE and the FAT, exFAT, NTFS and SMB
/// families may report a ctime that a writer can put back with the mtime.
pub fn ctime_moves_on_write(f_type: u64) -> bool {
    ![FUSE, MSDOS, EXFAT, NTFS, NTFS3, CIFS, SMB2].contains(&f_type)
}

/// Why inotify does not see every change here, if it does not: network
/// filesystems (another machine's writes), FUSE (the daemon's own),
/// overlay (writes to a lower layer).
pub fn events_unreliable(f_type: u64) -> Option<&'static str> {
    match f_type {
        NFS | SMB | CIFS | SMB2 | CEPH | AFS | V9FS => Some("a network filesystem"),
        FUSE => Some("a FUSE filesystem"),
        OVERLAY => Some("an overlay filesystem"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_fuse_and_overlay_sources_are_not_trusted_to_report_changes() {
        for (f_type, what) in [
            (0x6969, Some("a network filesystem")),
            (0xff53_4d42, Some("a network filesystem")),
            (0x6573_5546, Some("a FUSE filesystem")),
            (0x794c_7630, Some("an overlay filesystem")),
            (0xef53, None),
            (0x0102_1994, None),
        ] {
            assert_eq!(events_unreliable(f_type), what, "{f_type:#x}");
        }
    }

    #[test]
    fn ctime_is_trusted_on_ext4_and_tmpfs_only_of_these() {
        assert!(ctime_moves_on_write(0xef53) && ctime_moves_on_write(0x0102_1994));
        assert!(![FUSE, EXFAT, MSDOS, NTFS3, CIFS]
            .iter()
            .any(|&t| ctime_moves_on_write(t)));
    }
}
