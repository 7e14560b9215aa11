//! rtnetlink connections whose driver task ends with their user.

/// Aborts the task when dropped: a connection's driver, a supervised run.
#[derive(Debug)]
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection for requests: its handle, and the guard of its driver.
pub fn connect() -> std::io::Result<(rtnetlink::Handle, AbortOnDrop<()>)> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    Ok((handle, AbortOnDrop(tokio::spawn(connection))))
}
