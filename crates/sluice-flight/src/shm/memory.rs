//! The memory file of one exchange: an anonymous memfd the engine creates,
//! which the stage opens through `/proc/<engine pid>/fd/<n>`. It has no
//! name in any file system, so nothing is left behind when either side
//! dies: the memory is freed with the last mapping.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

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
    /// first written), mapped, and the path the peer opens it by.
    pub fn create(size: u64) -> io::Result<(Mapping, String)> {
        let name = c"sluice-stage";
        // SAFETY: a valid C string; the returned descriptor is checked
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor was just created and is owned by nothing else
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(size)?;
        let path = format!("/proc/{}/fd/{fd}", std::process::id());
        Ok((Self::map(file, size)?, path))
    }

    /// Whether `path` names an anonymous memory file (a memfd seen through
    /// `/proc/<pid>/fd`), not a file with a name: a stage maps only that, so
    /// an open request cannot make it read and write an arbitrary file.
    pub fn check_memfd(path: &str) -> Result<(), String> {
        let target = std::fs::read_link(path).map_err(|e| format!("`{path}`: {e}"))?;
        if target.to_string_lossy().starts_with("/memfd:") {
            Ok(())
        } else {
            Err(format!("`{path}` is {}, not a memfd", target.display()))
        }
    }

    /// Opens and maps the peer's memory file of at least `size` bytes.
    pub fn open(path: &str, size: u64) -> io::Result<Mapping> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
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

    /// The bytes `[offset, offset + length)`, or `None` outside the mapping.
    ///
    /// The peer may write these bytes at any time if it breaks the protocol;
    /// readers that cannot trust it copy them first.
    pub fn bytes(&self, offset: u64, length: u64) -> Option<&[u8]> {
        let (o, l) = (usize::try_from(offset).ok()?, usize::try_from(length).ok()?);
        if o.checked_add(l)? > self.len {
            return None;
        }
        // SAFETY: inside the mapping, which lives as long as `self`
        Some(unsafe { std::slice::from_raw_parts(self.ptr.add(o), l) })
    }

    /// A pointer to `[offset, offset + length)` for writing a slot this
    /// side was handed, or `None` outside the mapping.
    pub(crate) fn slot_ptr(&self, offset: u64, length: u64) -> Option<*mut u8> {
        self.bytes(offset, length)?;
        // SAFETY: checked to lie inside the mapping
        Some(unsafe { self.ptr.add(offset as usize) })
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
        let (ours, path) = Mapping::create(1 << 20).unwrap();
        let theirs = Mapping::open(&path, 1 << 20).unwrap();
        let p = ours.slot_ptr(4096, 5).unwrap();
        unsafe { std::ptr::copy_nonoverlapping(b"hello".as_ptr(), p, 5) };
        assert_eq!(theirs.bytes(4096, 5).unwrap(), b"hello");
        assert!(theirs.bytes((1 << 20) - 2, 3).is_none());
        assert!(theirs.bytes(u64::MAX, 2).is_none());
        assert!(
            Mapping::open(&path, 2 << 20).is_err(),
            "larger than the file"
        );
        assert!(Mapping::open("/proc/self/fd/999999", 1).is_err());
        assert!(Mapping::check_memfd(&path).is_ok());
        let file = tempfile::NamedTempFile::new().unwrap();
        let named = format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(file.as_file())
        );
        assert!(
            Mapping::check_memfd(&named)
                .unwrap_err()
                .contains("not a memfd")
        );
        assert!(Mapping::check_memfd(file.path().to_str().unwrap()).is_err());
    }
}
