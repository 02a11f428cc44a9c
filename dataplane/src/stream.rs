//! Byte streams to clients and backends: plain TCP or TLS, behind one type each.

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::net::TcpStream;
use monoio::BufResult;

/// A connection that is either plain TCP or TLS over TCP.
pub enum MaybeTls<T> {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (the rustls stream type of the side we are on).
    Tls(T),
}

/// A client connection.
pub type ClientStream = MaybeTls<monoio_rustls::ServerTlsStream<TcpStream>>;
/// A backend connection.
pub type BackendStream = MaybeTls<monoio_rustls::ClientTlsStream<TcpStream>>;

// SAFETY: both variants are `Split` (TcpStream, and monoio-rustls' stream over a Split IO):
// their read and write paths are independent, which is all `Split` promises.
unsafe impl<T: Split> Split for MaybeTls<T> {}

impl<T: AsyncReadRent> AsyncReadRent for MaybeTls<T> {
    async fn read<B: IoBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            MaybeTls::Plain(s) => s.read(buf).await,
            MaybeTls::Tls(s) => s.read(buf).await,
        }
    }

    async fn readv<B: IoVecBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            MaybeTls::Plain(s) => s.readv(buf).await,
            MaybeTls::Tls(s) => s.readv(buf).await,
        }
    }
}

impl<T: AsyncWriteRent> AsyncWriteRent for MaybeTls<T> {
    async fn write<B: IoBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            MaybeTls::Plain(s) => s.write(buf).await,
            MaybeTls::Tls(s) => s.write(buf).await,
        }
    }

    async fn writev<B: IoVecBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        match self {
            MaybeTls::Plain(s) => s.writev(buf).await,
            MaybeTls::Tls(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            MaybeTls::Plain(s) => s.flush().await,
            MaybeTls::Tls(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            MaybeTls::Plain(s) => s.shutdown().await,
            MaybeTls::Tls(s) => s.shutdown().await,
        }
    }
}
