//! Raw Ethernet I/O on one interface: an `AF_PACKET`/`SOCK_RAW` socket bound
//! to an interface index and an EtherType, non-blocking and driven by tokio.
//! Link-layer protocols (LLDP) use it, and DHCP reads packet marks with
//! [`marks`]; the standard library and tokio offer no safe way to do either.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// One received frame's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes copied into the buffer.
    pub len: usize,
    /// The frame's real length; larger than `len` when the buffer was too small.
    pub frame_len: usize,
    /// The frame was sent by this host (seen on the way out), not received.
    pub outgoing: bool,
    /// Interface the frame came in on.
    pub ifindex: u32,
}

/// An `AF_PACKET` socket bound to one interface and EtherType.
#[derive(Debug)]
pub struct PacketSocket {
    fd: AsyncFd<OwnedFd>,
    ifindex: u32,
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

impl PacketSocket {
    /// Opens a socket that receives and sends frames of `ethertype` on `ifindex`.
    /// Needs CAP_NET_RAW. Must be called within a tokio runtime.
    pub fn bind(ifindex: u32, ethertype: u16) -> io::Result<PacketSocket> {
        let fd = open_bound(ifindex, ethertype, libc::SOCK_NONBLOCK)?;
        // SAFETY: `fd` is an OwnedFd: valid, open, and always the same
        // descriptor for as long as the AsyncFd owns it.
        let fd = unsafe {
            AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE)
        }?;
        Ok(PacketSocket { fd, ifindex })
    }

    /// Also receives frames sent to a multicast MAC (for NICs that filter).
    pub fn join_multicast(&self, mac: [u8; 6]) -> io::Result<()> {
        // SAFETY: packet_mreq is plain old data; all-zero is a valid value.
        let mut request: libc::packet_mreq = unsafe { zeroed() };
        request.mr_ifindex = self.ifindex as i32;
        request.mr_type = libc::PACKET_MR_MULTICAST as u16;
        request.mr_alen = 6;
        request.mr_address[..6].copy_from_slice(&mac);
        // SAFETY: the pointer and length describe `request`, which outlives the call.
        check(unsafe {
            libc::setsockopt(
                self.fd.get_ref().as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                (&raw const request).cast::<libc::c_void>(),
                size_of::<libc::packet_mreq>() as libc::socklen_t,
            )
        })?;
        Ok(())
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Receives one frame into `buf`.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        loop {
            let mut guard = self.fd.readable().await?;
            let result = guard.try_io(|fd| {
                // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
                let mut from: libc::sockaddr_ll = unsafe { zeroed() };
                let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: `buf` and `from` are valid for writes of the lengths
                // passed; MSG_TRUNC makes the kernel return the full frame length.
                let n = unsafe {
                    libc::recvfrom(
                        fd.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast::<libc::c_void>(),
                        buf.len(),
                        libc::MSG_TRUNC,
                        (&raw mut from).cast::<libc::sockaddr>(),
                        &mut from_len,
                    )
                };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                let frame_len = n as usize;
                Ok(Received {
                    len: frame_len.min(buf.len()),
                    frame_len,
                    outgoing: from.sll_pkttype == libc::PACKET_OUTGOING,
                    ifindex: u32::try_from(from.sll_ifindex).unwrap_or(0),
                })
            });
            match result {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one complete Ethernet frame (header included) out of the interface.
    pub async fn send(&self, frame: &[u8]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| send_frame(fd.get_ref().as_fd(), frame)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

/// Writes one frame; a short write is an error.
fn send_frame(fd: BorrowedFd<'_>, frame: &[u8]) -> io::Result<()> {
    // SAFETY: `frame` is valid for reads of its length.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            frame.as_ptr().cast::<libc::c_void>(),
            frame.len(),
            0,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else if n as usize != frame.len() {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short frame write",
        ))
    } else {
        Ok(())
    }
}

pub mod marks;

/// The kernel's index of interface `name`.
pub fn interface_index(name: &str) -> io::Result<u32> {
    let name = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name contains NUL"))?;
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        index => Ok(index),
    }
}

/// Opens an `AF_PACKET` raw socket bound to `ifindex`, receiving frames of
/// `ethertype` (none with 0).
fn open_bound(ifindex: u32, ethertype: u16, flags: libc::c_int) -> io::Result<OwnedFd> {
    let protocol = ethertype.to_be();
    // Created with protocol 0 it receives nothing; bind() then names the
    // interface and the EtherType together, so no frame of another
    // interface is ever queued.
    // SAFETY: plain syscall with constant arguments; the result is checked.
    let raw = check(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags,
            0,
        )
    })?;
    // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol;
    address.sll_ifindex = i32::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?;
    // SAFETY: the pointer and length describe `address`, which outlives the call.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const address).cast::<libc::sockaddr>(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// A blocking sender of raw frames on one interface, for programs without an
/// async runtime (the in-machine installer announcing itself over LLDP).
#[derive(Debug)]
pub struct BlockingSender {
    fd: OwnedFd,
}

impl BlockingSender {
    /// Needs CAP_NET_RAW. The socket receives nothing.
    pub fn bind(ifindex: u32) -> io::Result<BlockingSender> {
        Ok(BlockingSender {
            fd: open_bound(ifindex, 0, 0)?,
        })
    }

    /// Sends one complete Ethernet frame (header included).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        send_frame(self.fd.as_fd(), frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_indexes_come_from_the_kernel() {
        assert_eq!(interface_index("lo").unwrap(), 1);
        assert!(interface_index("mm-no-such-if").is_err());
        assert!(interface_index("lo\0x").is_err());
    }
}
