//! The memory file of one exchange: an anonymous memfd the engine creates,
//! which the stage opens through `/proc/<engine pid>/fd/<n>`. It has no
//! name in any file system, so nothing is left behind when either side
//! dies: the memory is freed with the last mapping. It is sealed at its
//! size: neither side can shrink it under the other's mapping.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// The seals a memory file must carry: its size is fixed while mapped.
const SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;

/// A file mapped shared, read-write.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
    /// Kept open while the exchange lasts, so that its `/proc` path stays
    /// valid until the stage has opened it.
    file: File,
}

// The mapping is plain memory shared with the peer; which side may write
// which bytes is the protocol's business (slots are handed out, written once,
// then only read), not the type system's.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// A new memory file of `size` bytes (its pages are allocated when
    /// first written), sealed at that size, mapped, and the path the peer
    /// opens it by.
    pub fn create(size: u64) -> io::Result<(Mapping, String)> {
        let name = c"sluice-stage";
        // SAFETY: a valid C string; the returned descriptor is checked
        let fd = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor was just created and is owned by nothing else
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(size)?;
        // SAFETY: fcntl on an open descriptor; the result is checked
        if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, SEALS | libc::F_SEAL_SEAL) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let path = format!("/proc/{}/fd/{fd}", std::process::id());
        Ok((Self::map(file, size)?, path))
    }

    /// Opens and maps the memory file of at least `size` bytes that `peer`
    /// offered: `path` must be one of `peer`'s descriptors
    /// (`/proc/<peer>/fd/<n>`), and the file opened a memfd sealed at its
    /// size. So an open request cannot make the stage map a file with a
    /// name, another process's memory, or memory the peer could shrink.
    pub fn open(path: &str, peer: i32, size: u64) -> io::Result<Mapping> {
        let refuse = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let descriptor = path
            .strip_prefix("/proc/")
            .and_then(|p| p.split_once("/fd/"))
            .filter(|(pid, n)| pid.parse() == Ok(peer) && n.parse::<u32>().is_ok());
        if descriptor.is_none() {
            return Err(refuse(format!(
                "not a descriptor of the peer (process {peer}): want /proc/{peer}/fd/<n>"
            )));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        // checked on the file opened, not on the path: the peer cannot
        // swap the descriptor between a check and the open
        // SAFETY: fcntl on an open descriptor; the result is checked
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & SEALS != SEALS {
            return Err(refuse(
                "not a memfd sealed against shrinking and growing".into(),
            ));
        }
        let actual = file.metadata()?.len();
        if actual < size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the file holds {actual} bytes, the offer says {size}"),
            ));
        }
        Self::map(file, size)
    }

    fn map(file: File, size: u64) -> io::Result<Mapping> {
        let len = usize::try_from(size)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a mapping of 0 bytes"))?;
        // SAFETY: a fresh mapping of an open file; the kernel picks the address
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
            file,
        })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mapped (never: a mapping has at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where `[offset, offset + length)` starts in this process, if it lies
    /// inside the mapping.
    fn range(&self, offset: u64, length: u64) -> Option<(*mut u8, usize)> {
        let (o, l) = (usize::try_from(offset).ok()?, usize::try_from(length).ok()?);
        if o.checked_add(l)? > self.len {
            return None;
        }
        // SAFETY: `o` is inside the mapping (or its end, for `l` = 0)
        Some((unsafe { self.ptr.add(o) }, l))
    }

    /// Whether `[offset, offset + length)` lies inside the mapping.
    pub fn holds(&self, offset: u64, length: u64) -> bool {
        self.range(offset, length).is_some()
    }

    /// The bytes `[offset, offset + length)`, or `None` outside the mapping,
    /// for a side that trusts its peer (the stage reading the engine's
    /// batches in place): a peer that wrote them while they are borrowed
    /// would break the borrow's promise.
    pub fn bytes(&self, offset: u64, length: u64) -> Option<&[u8]> {
        let (p, l) = self.range(offset, length)?;
        // SAFETY: inside the mapping, which lives as long as `self`
        Some(unsafe { std::slice::from_raw_parts(p, l) })
    }

    /// A copy of the bytes `[offset, offset + length)`, or `None` outside
    /// the mapping. Copied through the raw pointer, never a `&[u8]`: the
    /// peer may be writing them at the same moment if it breaks the
    /// protocol, and a shared slice of changing bytes would be undefined.
    pub fn copy_out(&self, offset: u64, length: u64) -> Option<Vec<u8>> {
        let (p, l) = self.range(offset, length)?;
        let mut copy = Vec::with_capacity(l);
        // SAFETY: the source lies inside the mapping, the destination holds
        // `l` bytes, and they cannot overlap
        unsafe {
            std::ptr::copy_nonoverlapping(p, copy.as_mut_ptr(), l);
            copy.set_len(l);
        }
        Some(copy)
    }

    /// A pointer to `[offset, offset + length)` for writing a slot this
    /// side was handed, or `None` outside the mapping.
    pub(crate) fn slot_ptr(&self, offset: u64, length: u64) -> Option<*mut u8> {
        self.range(offset, length).map(|(p, _)| p)
    }

    /// The file behind the mapping.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped; no borrow outlives `self`
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_sees_what_one_side_writes() {
        let me = std::process::id() as i32;
        let (ours, path) = Mapping::create(1 << 20).unwrap();
        let theirs = Mapping::open(&path, me, 1 << 20).unwrap();
        let p = ours.slot_ptr(4096, 5).unwrap();
        unsafe { std::ptr::copy_nonoverlapping(b"hello".as_ptr(), p, 5) };
        assert_eq!(theirs.bytes(4096, 5).unwrap(), b"hello");
        assert_eq!(theirs.copy_out(4096, 5).unwrap(), b"hello");
        assert!(theirs.bytes((1 << 20) - 2, 3).is_none());
        assert!(theirs.holds((1 << 20) - 2, 2) && !theirs.holds((1 << 20) - 2, 3));
        assert!(theirs.copy_out((1 << 20) - 2, 3).is_none());
        assert!(theirs.bytes(u64::MAX, 2).is_none());
        assert!(theirs.copy_out(u64::MAX, 2).is_none());
        assert!(
            Mapping::open(&path, me, 2 << 20).is_err(),
            "larger than the file"
        );
        assert!(Mapping::open(&format!("/proc/{me}/fd/999999"), me, 1).is_err());
    }

    #[test]
    fn only_a_sealed_memfd_of_the_peer_is_opened() {
        let me = std::process::id() as i32;
        let (_ours, path) = Mapping::create(1 << 20).unwrap();
        // the same descriptor, named for another process, or not by its descriptor
        let err = Mapping::open(&path, me + 1, 1 << 20).unwrap_err();
        assert!(
            err.to_string().contains("not a descriptor of the peer"),
            "{err}"
        );
        let fd = path.rsplit('/').next().unwrap();
        for other in [
            format!("/proc/self/fd/{fd}"),
            format!("/proc/{me}/fd/{fd}/../{fd}"),
            format!("/dev/fd/{fd}"),
        ] {
            assert!(Mapping::open(&other, me, 1 << 20).is_err(), "{other}");
        }
        // a file with a name, and a memfd nobody sealed: its owner could
        // shrink it under the mapping
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(1 << 20).unwrap();
        let named = format!("/proc/{me}/fd/{}", file.as_file().as_raw_fd());
        let err = Mapping::open(&named, me, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("not a memfd sealed"), "{err}");
        let unsealed = unsafe { libc::memfd_create(c"unsealed".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(unsealed >= 0);
        let unsealed = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(unsealed) };
        unsealed.set_len(1 << 20).unwrap();
        let err = Mapping::open(
            &format!("/proc/{me}/fd/{}", unsealed.as_raw_fd()),
            me,
            1 << 20,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a memfd sealed"), "{err}");
        // and the engine's own file cannot be shrunk
        let (ours, _) = Mapping::create(1 << 20).unwrap();
        assert!(ours.file().set_len(4096).is_err());
    }
}
