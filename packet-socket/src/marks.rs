//! Packet marks on received datagrams (`SO_RCVMARK`, Linux 5.19+): the leaf's
//! bridge filter marks each DHCP datagram with the index of the bridge port
//! it came in on, so a UDP socket on the bridge learns the port — which
//! the client cannot choose, unlike its MAC or address.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};

/// One datagram received with [`recv_marked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marked {
    pub len: usize,
    pub from: SocketAddrV4,
    /// The packet's mark; `None` when it had none (0) or the kernel did not
    /// report it.
    pub mark: Option<u32>,
}

/// Asks the kernel to report each received packet's mark on `socket`.
pub fn receive_marks(socket: &impl AsFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the pointer and length describe `on`, which outlives the call.
    let result = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVMARK,
            (&raw const on).cast::<libc::c_void>(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Receives one datagram from an IPv4 UDP socket with its mark (the socket's
/// blocking mode and receive timeout apply as for `recv_from`).
pub fn recv_marked(socket: &impl AsFd, buf: &mut [u8]) -> io::Result<Marked> {
    // Room for one cmsghdr carrying a u32, 8-byte aligned.
    let mut control = [0u64; 8];
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut from: libc::sockaddr_in = unsafe { zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast::<libc::c_void>(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut message: libc::msghdr = unsafe { zeroed() };
    message.msg_name = (&raw mut from).cast::<libc::c_void>();
    message.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    message.msg_iov = &raw mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast::<libc::c_void>();
    message.msg_controllen = size_of::<[u64; 8]>();
    // SAFETY: every pointer in `message` refers to a live buffer of the
    // stated length (`buf`, `from`, `control`) that outlives the call.
    let n = unsafe { libc::recvmsg(socket.as_fd().as_raw_fd(), &raw mut message, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut mark = None;
    // SAFETY: `message` was filled in by recvmsg; CMSG_FIRSTHDR and
    // CMSG_NXTHDR stay within msg_control/msg_controllen and return null at
    // its end; CMSG_DATA of a header whose length covers a u32 points at
    // that many readable bytes of `control` (read unaligned).
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&raw const message);
        while !header.is_null() {
            let h = &*header;
            if h.cmsg_level == libc::SOL_SOCKET
                && h.cmsg_type == libc::SO_MARK
                && h.cmsg_len as usize >= libc::CMSG_LEN(size_of::<u32>() as u32) as usize
            {
                let value = libc::CMSG_DATA(header).cast::<u32>().read_unaligned();
                mark = (value != 0).then_some(value);
            }
            header = libc::CMSG_NXTHDR(&raw const message, header);
        }
    }
    let from = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)),
        u16::from_be(from.sin_port),
    );
    Ok(Marked {
        len: n as usize,
        from,
        mark,
    })
}

/// The name of the interface with index `index`.
pub fn interface_name(index: u32) -> io::Result<String> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has the IF_NAMESIZE bytes if_indextoname may write.
    let result = unsafe { libc::if_indextoname(index, name.as_mut_ptr()) };
    if result.is_null() {
        return Err(io::Error::last_os_error());
    }
    let bytes: Vec<u8> = name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "interface name is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn a_datagram_comes_with_its_sender_and_no_mark() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receive_marks(&receiver).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender
            .send_to(b"hello", receiver.local_addr().unwrap())
            .unwrap();
        let mut buf = [0u8; 64];
        let got = recv_marked(&receiver, &mut buf).unwrap();
        assert_eq!(&buf[..got.len], b"hello");
        assert_eq!(
            std::net::SocketAddr::V4(got.from),
            sender.local_addr().unwrap()
        );
        assert_eq!(got.mark, None);
    }

    #[test]
    fn a_marked_datagram_reports_its_mark() {
        // SO_MARK on the sender needs CAP_NET_ADMIN; without it there is
        // nothing to check here (the testbed checks marks end to end).
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receive_marks(&receiver).unwrap();
        let sender =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        if sender.set_mark(0x4d4d).is_err() {
            return;
        }
        sender
            .send_to(b"x", &receiver.local_addr().unwrap().into())
            .unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(recv_marked(&receiver, &mut buf).unwrap().mark, Some(0x4d4d));
    }

    #[test]
    fn interface_names_come_from_the_kernel() {
        assert_eq!(interface_name(1).unwrap(), "lo");
        assert!(interface_name(0x7fff_fff0).is_err());
    }
}
