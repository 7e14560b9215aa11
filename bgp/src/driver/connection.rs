//! One TCP connection to a peer: a reader task that frames and decodes
//! messages (every length checked before a byte is trusted) and a writer
//! task fed by a channel. Both report to the speaker task.

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use rustbgpd_wire::{Message, NotificationMessage, decode_message, encode_message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::route::PeerId;
use crate::session::ConnId;

/// Largest message read (RFC 4271; extended messages are not offered).
const MAX_MESSAGE: usize = 4096;
/// Messages queued to one peer before the writer applies back-pressure.
const WRITE_QUEUE: usize = 4096;

/// What a connection tells the speaker task.
#[derive(Debug)]
pub enum ConnectionEvent {
    Message(Message),
    Malformed(NotificationMessage),
    Closed,
}

/// The speaker's end of a connection.
#[derive(Debug)]
pub struct Connection {
    pub writer: mpsc::Sender<Message>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    reader: JoinHandle<()>,
    writer_task: JoinHandle<()>,
}

impl Connection {
    /// Starts the reader and writer of `stream`.
    pub fn start(
        stream: TcpStream,
        peer: PeerId,
        conn: ConnId,
        events: mpsc::Sender<(PeerId, ConnId, ConnectionEvent)>,
    ) -> std::io::Result<Connection> {
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        let remote = stream.peer_addr()?;
        let (mut read, mut write) = stream.into_split();
        let (writer, mut queue) = mpsc::channel::<Message>(WRITE_QUEUE);
        let writer_task = tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                let bytes = match encode_message(&message) {
                    Ok(bytes) => bytes,
                    Err(error) => {
                        tracing::warn!(%error, "BGP message not encodable; dropped");
                        continue;
                    }
                };
                if write.write_all(&bytes).await.is_err() {
                    return;
                }
                // A NOTIFICATION is the last word on a connection.
                if matches!(message, Message::Notification(_)) {
                    let _ = write.shutdown().await;
                    return;
                }
            }
            let _ = write.shutdown().await;
        });
        let reader = tokio::spawn(async move {
            let mut buffer = BytesMut::with_capacity(2 * MAX_MESSAGE);
            loop {
                match next_message(&mut buffer) {
                    Ok(Some(message)) => {
                        if events
                            .send((peer, conn, ConnectionEvent::Message(message)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(notification) => {
                        let _ = events
                            .send((peer, conn, ConnectionEvent::Malformed(notification)))
                            .await;
                        return;
                    }
                }
                match read.read_buf(&mut buffer).await {
                    Ok(0) | Err(_) => {
                        let _ = events.send((peer, conn, ConnectionEvent::Closed)).await;
                        return;
                    }
                    Ok(_) => {}
                }
            }
        });
        Ok(Connection {
            writer,
            local,
            remote,
            reader,
            writer_task,
        })
    }

    /// Stops reading; the writer sends what is queued, then closes.
    pub fn close(self) {
        self.reader.abort();
        drop(self.writer);
        drop(self.writer_task);
    }
}

/// The next whole message in `buffer`, if one has arrived; an error is
/// the NOTIFICATION the codec says a broken message deserves.
fn next_message(buffer: &mut BytesMut) -> Result<Option<Message>, NotificationMessage> {
    const HEADER: usize = 19;
    if buffer.len() < HEADER {
        return Ok(None);
    }
    let length = usize::from(u16::from_be_bytes([buffer[16], buffer[17]]));
    if (HEADER..=MAX_MESSAGE).contains(&length) && buffer.len() < length {
        return Ok(None);
    }
    // Out-of-range lengths reach the decoder, which names the error.
    let take = length.clamp(HEADER, MAX_MESSAGE).min(buffer.len());
    let mut frame = buffer.split_to(take).freeze();
    match decode_message(&mut frame, MAX_MESSAGE as u16) {
        Ok(message) => Ok(Some(message)),
        Err(error) => {
            let (code, subcode, data) = error.to_notification();
            buffer.advance(buffer.len());
            Err(NotificationMessage::new(code, subcode, data))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_joined_messages() {
        let keepalive = encode_message(&Message::Keepalive).unwrap_or_default();
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&keepalive[..10]);
        assert!(matches!(next_message(&mut buffer), Ok(None)));
        buffer.extend_from_slice(&keepalive[10..]);
        buffer.extend_from_slice(&keepalive);
        assert!(matches!(
            next_message(&mut buffer),
            Ok(Some(Message::Keepalive))
        ));
        assert!(matches!(
            next_message(&mut buffer),
            Ok(Some(Message::Keepalive))
        ));
        assert!(buffer.is_empty());
    }

    #[test]
    fn bad_marker_and_length_are_notifications() {
        let mut bad = BytesMut::from(&[0u8; 19][..]);
        assert!(next_message(&mut bad).is_err(), "marker not all ones");
        let mut keepalive = encode_message(&Message::Keepalive)
            .unwrap_or_default()
            .to_vec();
        keepalive[16] = 0xff; // length 65299
        let mut long = BytesMut::from(&keepalive[..]);
        assert!(next_message(&mut long).is_err(), "length beyond 4096");
    }
}
