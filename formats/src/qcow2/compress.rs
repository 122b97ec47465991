//! Compressed clusters: zlib (raw deflate with a 4 KiB window) and zstd, one whole cluster at
//! a time (qcow2.txt "Compressed Clusters Descriptor"; QEMU's block/qcow2-threads.c).
//!
//! (De)compression is CPU work, so it runs on the AioContext's thread pool, like QEMU's
//! qcow2_co_do_compress. Decompression stops once a cluster's worth of output exists: the
//! stored data is padded to 512-byte sectors and may be followed by the next cluster's data.

use block::{AioContext, Error, Result};

use super::header::CompressionType;

fn corrupt_data() -> Error {
    Error::new(libc::EIO, "Could not decompress a compressed cluster")
}

fn inflate_raw(input: &[u8], cluster_size: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; cluster_size];
    let mut d = flate2::Decompress::new(false);
    let status = d
        .decompress(input, &mut out, flate2::FlushDecompress::Finish)
        .map_err(|_| corrupt_data())?;
    let full = d.total_out() as usize == cluster_size;
    match status {
        flate2::Status::StreamEnd | flate2::Status::BufError | flate2::Status::Ok if full => {
            Ok(out)
        }
        _ => Err(corrupt_data()),
    }
}

fn unzstd(input: &[u8], cluster_size: usize) -> Result<Vec<u8>> {
    use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
    let mut out = vec![0u8; cluster_size];
    let mut decoder = Decoder::new().map_err(|_| corrupt_data())?;
    let mut inbuf = InBuffer::around(input);
    let mut outbuf = OutBuffer::around(&mut out[..]);
    loop {
        let hint = decoder
            .run(&mut inbuf, &mut outbuf)
            .map_err(|_| corrupt_data())?;
        if outbuf.pos() == cluster_size || hint == 0 {
            break;
        }
        if inbuf.pos() == input.len() {
            return Err(corrupt_data());
        }
    }
    if outbuf.pos() != cluster_size {
        return Err(corrupt_data());
    }
    Ok(out)
}

fn deflate_raw(input: &[u8]) -> Option<Vec<u8>> {
    let mut c = flate2::Compress::new_with_window_bits(flate2::Compression::default(), false, 12);
    let mut out = vec![0u8; input.len()];
    match c.compress(input, &mut out, flate2::FlushCompress::Finish) {
        Ok(flate2::Status::StreamEnd) => {
            out.truncate(c.total_out() as usize);
            Some(out)
        }
        _ => None,
    }
}

fn zstd_compress(input: &[u8]) -> Option<Vec<u8>> {
    let out = zstd::bulk::compress(input, 0).ok()?;
    (out.len() < input.len()).then_some(out)
}

/// Decompresses one cluster from `input` on the thread pool.
pub async fn decompress(
    ty: CompressionType,
    input: Vec<u8>,
    cluster_size: usize,
) -> Result<Vec<u8>> {
    AioContext::current()
        .thread_pool()
        .submit(move || match ty {
            CompressionType::Zlib => inflate_raw(&input, cluster_size),
            CompressionType::Zstd => unzstd(&input, cluster_size),
        })
        .await
}

/// Compresses one cluster on the thread pool; None when it does not get smaller (the
/// cluster is then written uncompressed, as QEMU does).
pub async fn compress(ty: CompressionType, input: Vec<u8>) -> Option<Vec<u8>> {
    AioContext::current()
        .thread_pool()
        .submit(move || match ty {
            CompressionType::Zlib => deflate_raw(&input),
            CompressionType::Zstd => zstd_compress(&input),
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_types_round_trip_with_trailing_padding() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i / 100) as u8).collect();
        let z = deflate_raw(&data).unwrap();
        let mut padded = z.clone();
        padded.extend_from_slice(&[0xaa; 700]);
        assert_eq!(inflate_raw(&padded, data.len()).unwrap(), data);
        let s = zstd_compress(&data).unwrap();
        let mut padded = s.clone();
        padded.extend_from_slice(&[0; 700]);
        assert_eq!(unzstd(&padded, data.len()).unwrap(), data);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(inflate_raw(&[0xff; 100], 4096).is_err());
        assert!(unzstd(&[0xff; 100], 4096).is_err());
    }
}
