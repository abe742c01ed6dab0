//! LTX files: Litestream's transaction files (format version 3, magic `LTX1`), as read and
//! written by Litestream 0.5.x (`github.com/superfly/ltx` v0.5.x).
//!
//! Layout (all integers big-endian; see FORMAT-NOTES.md):
//!
//! ```text
//! header      100 bytes   magic "LTX1", flags, page size, commit, min/max TXID, timestamp,
//!                         pre-apply checksum, WAL offset/size/salts, node id, 20 reserved
//! page frames             per page: pgno u32, flags u16 (bit 0: size follows), size u32,
//!                         `size` bytes of one LZ4 *block* (no frame) holding the page
//! end marker  6 bytes     an all-zero page header
//! page index              uvarint triples (pgno, frame offset, frame size) by pgno, a uvarint 0,
//!                         then the index's byte length as u64
//! trailer     16 bytes    post-apply checksum u64, file checksum u64
//! ```
//!
//! The file checksum is CRC-64/GO-ISO over every byte before it, except that a page frame
//! contributes its *uncompressed* page instead of its LZ4 block; bit 63 is then set.

use crc::{CRC_64_GO_ISO, Crc};
use fsqlite_error::{FrankenError, Result};

/// The first four bytes of every LTX file.
pub const MAGIC: &[u8; 4] = b"LTX1";
/// The format version that [`MAGIC`] stands for.
pub const VERSION: u32 = 3;
/// Size of the header, in bytes.
pub const HEADER_SIZE: usize = 100;
/// Size of a page header (pgno + flags), in bytes.
pub const PAGE_HEADER_SIZE: usize = 6;
/// Size of the trailer, in bytes.
pub const TRAILER_SIZE: usize = 16;
/// Bit 63, set in every checksum the format stores so a real checksum is never zero.
pub const CHECKSUM_FLAG: u64 = 1 << 63;
/// Header flag: the file tracks no database checksums (pre/post-apply are zero).
pub const HEADER_FLAG_NO_CHECKSUM: u32 = 1 << 1;
/// Every header flag this version knows.
pub const HEADER_FLAG_MASK: u32 = HEADER_FLAG_NO_CHECKSUM;
/// Page-header flag: a 4-byte size follows and the data is one LZ4 block.
pub const PAGE_FLAG_SIZE: u16 = 1 << 0;
/// Largest SQLite page size.
pub const MAX_PAGE_SIZE: u32 = 65536;
/// The byte offset SQLite reserves for locks; the page holding it is never stored.
pub const PENDING_BYTE: u64 = 0x4000_0000;

const CRC64: Crc<u64> = Crc::<u64>::new(&CRC_64_GO_ISO);

/// The 100-byte header of an LTX file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LtxHeader {
    /// Header flags ([`HEADER_FLAG_NO_CHECKSUM`] is the only one defined).
    pub flags: u32,
    /// Database page size in bytes (a power of two, 512..=65536).
    pub page_size: u32,
    /// Database size in pages after this file is applied (0: the database is deleted).
    pub commit: u32,
    /// First transaction ID this file covers (1 for a snapshot).
    pub min_txid: u64,
    /// Last transaction ID this file covers.
    pub max_txid: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Database checksum before this file applies (0 on snapshots and no-checksum files).
    pub pre_apply_checksum: u64,
    /// Offset of the source WAL segment, 0 if none.
    pub wal_offset: i64,
    /// Size of the source WAL segment, 0 if none.
    pub wal_size: i64,
    /// Salt-1 of the source WAL, 0 if none.
    pub wal_salt1: u32,
    /// Salt-2 of the source WAL, 0 if none.
    pub wal_salt2: u32,
    /// Id of the node that wrote the file, 0 if unset.
    pub node_id: u64,
}

/// One database page carried by an LTX file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// 1-based page number.
    pub pgno: u32,
    /// The page image, exactly `page_size` bytes.
    pub data: Vec<u8>,
}

/// A decoded LTX file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LtxFile {
    /// The header.
    pub header: LtxHeader,
    /// The pages, in ascending page-number order.
    pub pages: Vec<Page>,
    /// Database checksum after this file applies (0 if the file tracks none).
    pub post_apply_checksum: u64,
    /// The file checksum from the trailer (already verified by [`decode`]).
    pub file_checksum: u64,
}

impl LtxHeader {
    /// A snapshot header (min TXID 1) for a database of `commit` pages at `max_txid`.
    pub fn snapshot(page_size: u32, commit: u32, max_txid: u64, timestamp_ms: i64) -> Self {
        Self {
            page_size,
            commit,
            min_txid: 1,
            max_txid,
            timestamp_ms,
            ..Self::default()
        }
    }

    /// An incremental header for TXIDs `min_txid..=max_txid`, applying to a database whose
    /// checksum is `pre_apply_checksum`.
    pub fn incremental(
        page_size: u32,
        commit: u32,
        min_txid: u64,
        max_txid: u64,
        timestamp_ms: i64,
        pre_apply_checksum: u64,
    ) -> Self {
        Self {
            page_size,
            commit,
            min_txid,
            max_txid,
            timestamp_ms,
            pre_apply_checksum,
            ..Self::default()
        }
    }

    /// A snapshot file holds every page of the database (its min TXID is 1).
    pub fn is_snapshot(&self) -> bool {
        self.min_txid == 1
    }

    /// True if the file tracks no database checksums.
    pub fn no_checksum(&self) -> bool {
        self.flags & HEADER_FLAG_NO_CHECKSUM != 0
    }

    /// The page number of the lock page for this page size.
    pub fn lock_pgno(&self) -> u32 {
        lock_pgno(self.page_size)
    }

    /// Checks every field against the rules of the format.
    pub fn validate(&self) -> Result<()> {
        if self.flags & !HEADER_FLAG_MASK != 0 {
            return Err(FrankenError::out_of_range(
                "LTX header flags (offset 4; known mask 0x00000002)",
                format!("0x{:08x}", self.flags),
            ));
        }
        if !is_valid_page_size(self.page_size) {
            return Err(FrankenError::out_of_range(
                "LTX header page size (offset 8; a power of two from 512 to 65536)",
                self.page_size,
            ));
        }
        if self.min_txid == 0 {
            return Err(FrankenError::out_of_range(
                "LTX header min TXID (offset 16; must be at least 1)",
                0,
            ));
        }
        if self.max_txid == 0 {
            return Err(FrankenError::out_of_range(
                "LTX header max TXID (offset 24; must be at least 1)",
                0,
            ));
        }
        if self.min_txid > self.max_txid {
            return Err(FrankenError::out_of_range(
                "LTX header TXID range (min TXID at offset 16 must not exceed max TXID at offset 24)",
                format!("{}..{}", self.min_txid, self.max_txid),
            ));
        }
        if self.wal_offset < 0 {
            return Err(FrankenError::out_of_range(
                "LTX header WAL offset (offset 48; must not be negative)",
                self.wal_offset,
            ));
        }
        if self.wal_size < 0 {
            return Err(FrankenError::out_of_range(
                "LTX header WAL size (offset 56; must not be negative)",
                self.wal_size,
            ));
        }
        if (self.wal_salt1 != 0 || self.wal_salt2 != 0) && self.wal_offset == 0 {
            return Err(FrankenError::out_of_range(
                "LTX header WAL salts (offsets 64/68; non-zero salts need a non-zero WAL offset)",
                format!("{:08x}/{:08x}", self.wal_salt1, self.wal_salt2),
            ));
        }
        if self.wal_offset == 0 && self.wal_size != 0 {
            return Err(FrankenError::out_of_range(
                "LTX header WAL size (offset 56; a non-zero WAL size needs a non-zero WAL offset)",
                self.wal_size,
            ));
        }
        let pre = self.pre_apply_checksum;
        if self.is_snapshot() || self.no_checksum() {
            if pre != 0 {
                return Err(FrankenError::out_of_range(
                    "LTX header pre-apply checksum (offset 40; must be zero on a snapshot or no-checksum file)",
                    format!("{pre:016x}"),
                ));
            }
        } else if pre & CHECKSUM_FLAG == 0 {
            return Err(FrankenError::out_of_range(
                "LTX header pre-apply checksum (offset 40; must be non-zero with bit 63 set on an incremental file)",
                format!("{pre:016x}"),
            ));
        }
        Ok(())
    }

    /// The 100 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_be_bytes());
        b[12..16].copy_from_slice(&self.commit.to_be_bytes());
        b[16..24].copy_from_slice(&self.min_txid.to_be_bytes());
        b[24..32].copy_from_slice(&self.max_txid.to_be_bytes());
        b[32..40].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        b[40..48].copy_from_slice(&self.pre_apply_checksum.to_be_bytes());
        b[48..56].copy_from_slice(&self.wal_offset.to_be_bytes());
        b[56..64].copy_from_slice(&self.wal_size.to_be_bytes());
        b[64..68].copy_from_slice(&self.wal_salt1.to_be_bytes());
        b[68..72].copy_from_slice(&self.wal_salt2.to_be_bytes());
        b[72..80].copy_from_slice(&self.node_id.to_be_bytes());
        b
    }

    /// Parses the 100 header bytes at the start of `b` (the magic is checked; the fields
    /// are not: call [`LtxHeader::validate`]).
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let Some(b) = b.get(..HEADER_SIZE) else {
            return Err(corrupt(format!(
                "file is {} bytes, shorter than the {HEADER_SIZE}-byte header",
                b.len()
            )));
        };
        if &b[0..4] != MAGIC {
            return Err(corrupt(format!(
                "bad magic at offset 0: expected \"LTX1\" (4c545831), found {}",
                hex(&b[0..4])
            )));
        }
        let mut r = Cursor { buf: b, pos: 4 };
        Ok(Self {
            flags: r.u32()?,
            page_size: r.u32()?,
            commit: r.u32()?,
            min_txid: r.u64()?,
            max_txid: r.u64()?,
            timestamp_ms: r.u64()?.cast_signed(),
            pre_apply_checksum: r.u64()?,
            wal_offset: r.u64()?.cast_signed(),
            wal_size: r.u64()?.cast_signed(),
            wal_salt1: r.u32()?,
            wal_salt2: r.u32()?,
            node_id: r.u64()?,
        })
    }
}

/// The page number that holds SQLite's lock byte for `page_size`; it is never stored.
pub fn lock_pgno(page_size: u32) -> u32 {
    if page_size == 0 {
        return 0;
    }
    (PENDING_BYTE / u64::from(page_size)) as u32 + 1
}

/// True for the page sizes SQLite allows: powers of two from 512 to 65536.
pub fn is_valid_page_size(page_size: u32) -> bool {
    (512..=MAX_PAGE_SIZE).contains(&page_size) && page_size.is_power_of_two()
}

/// The checksum of one page: CRC-64/GO-ISO over the page number (u32 big-endian) followed
/// by the page image, with bit 63 set.
pub fn page_checksum(pgno: u32, data: &[u8]) -> u64 {
    let mut d = CRC64.digest();
    d.update(&pgno.to_be_bytes());
    d.update(data);
    CHECKSUM_FLAG | d.finalize()
}

/// The database checksum of a database image: the XOR of [`page_checksum`] over every page
/// except the lock page, with bit 63 set (an empty database is just [`CHECKSUM_FLAG`]).
/// A trailing partial page is ignored, as Litestream's reader does.
pub fn database_checksum(db: &[u8], page_size: u32) -> u64 {
    let mut sum = CHECKSUM_FLAG;
    if page_size == 0 {
        return sum;
    }
    let lock = lock_pgno(page_size);
    for (i, data) in db.chunks_exact(page_size as usize).enumerate() {
        let pgno = i as u32 + 1;
        if pgno != lock {
            sum = CHECKSUM_FLAG | (sum ^ page_checksum(pgno, data));
        }
    }
    sum
}

/// The database checksum of the database made of exactly `pages` (a snapshot's pages).
pub fn checksum_pages(pages: &[Page]) -> u64 {
    pages.iter().fold(CHECKSUM_FLAG, |sum, p| {
        CHECKSUM_FLAG | (sum ^ page_checksum(p.pgno, &p.data))
    })
}

/// The file checksum of an encoded LTX file, recomputed from its content (the same walk
/// [`decode`] does; the stored checksum in the last 8 bytes is not read).
pub fn file_checksum(bytes: &[u8]) -> Result<u64> {
    Ok(decode_inner(bytes, false)?.file_checksum)
}

/// Encodes a file: `pages` must be in ascending page-number order, each `page_size` bytes,
/// none past `commit` nor the lock page; a snapshot must hold every page `1..=commit`.
///
/// `post_apply_checksum` is the [`database_checksum`] of the database after the file
/// applies (for a snapshot, [`checksum_pages`] of its pages), or 0 for a no-checksum file.
#[allow(clippy::too_many_lines)] // one linear walk of the format
pub fn encode(header: &LtxHeader, pages: &[Page], post_apply_checksum: u64) -> Result<Vec<u8>> {
    header.validate()?;
    validate_post_apply(header, post_apply_checksum)?;
    let page_size = header.page_size as usize;
    let lock = header.lock_pgno();
    let mut prev = 0u32;
    for (i, p) in pages.iter().enumerate() {
        if p.pgno == 0 {
            return Err(FrankenError::out_of_range(
                format!("page number of page #{i}"),
                0,
            ));
        }
        if p.data.len() != page_size {
            return Err(FrankenError::out_of_range(
                format!(
                    "size of page {} (expected the header's page size {page_size})",
                    p.pgno
                ),
                p.data.len(),
            ));
        }
        if p.pgno > header.commit {
            return Err(FrankenError::out_of_range(
                format!("page number (the commit size is {} pages)", header.commit),
                p.pgno,
            ));
        }
        if p.pgno == lock {
            return Err(FrankenError::out_of_range(
                "page number (the lock page is never stored)",
                p.pgno,
            ));
        }
        if p.pgno <= prev {
            return Err(FrankenError::out_of_range(
                format!("page number after page {prev} (pages must ascend)"),
                p.pgno,
            ));
        }
        let expected = next_snapshot_pgno(prev, lock);
        if header.is_snapshot() && p.pgno != expected {
            return Err(FrankenError::out_of_range(
                format!("page number in a snapshot (expected page {expected})"),
                p.pgno,
            ));
        }
        prev = p.pgno;
    }
    if header.is_snapshot() {
        let expected = snapshot_page_count(header.commit, lock);
        if pages.len() as u64 != expected {
            return Err(FrankenError::out_of_range(
                format!(
                    "page count of a snapshot (expected {expected} for a commit of {} pages)",
                    header.commit
                ),
                pages.len(),
            ));
        }
        if !header.no_checksum() {
            let computed = checksum_pages(pages);
            if computed != post_apply_checksum {
                return Err(FrankenError::out_of_range(
                    format!(
                        "post-apply checksum of a snapshot (the pages' checksum is {computed:016x})"
                    ),
                    format!("{post_apply_checksum:016x}"),
                ));
            }
        }
    }

    let mut out = Vec::with_capacity(HEADER_SIZE + pages.len() * (page_size / 2 + 16) + 64);
    let mut hash = CRC64.digest();
    let hb = header.to_bytes();
    out.extend_from_slice(&hb);
    hash.update(&hb);

    let mut index = Vec::with_capacity(pages.len());
    for p in pages {
        let offset = out.len() as u64;
        let block = lz4_flex::block::compress(&p.data);
        let mut ph = [0u8; PAGE_HEADER_SIZE + 4];
        ph[0..4].copy_from_slice(&p.pgno.to_be_bytes());
        ph[4..6].copy_from_slice(&PAGE_FLAG_SIZE.to_be_bytes());
        let block_len = u32::try_from(block.len())
            .map_err(|_| FrankenError::internal("an LZ4 block of one page exceeds 4 GiB"))?;
        ph[6..10].copy_from_slice(&block_len.to_be_bytes());
        out.extend_from_slice(&ph);
        hash.update(&ph);
        out.extend_from_slice(&block);
        hash.update(&p.data);
        index.push((p.pgno, offset, out.len() as u64 - offset));
    }
    let end = [0u8; PAGE_HEADER_SIZE];
    out.extend_from_slice(&end);
    hash.update(&end);

    let index_start = out.len();
    for &(pgno, offset, size) in &index {
        put_uvarint(&mut out, u64::from(pgno));
        put_uvarint(&mut out, offset);
        put_uvarint(&mut out, size);
    }
    put_uvarint(&mut out, 0);
    let index_len = (out.len() - index_start) as u64;
    out.extend_from_slice(&index_len.to_be_bytes());
    out.extend_from_slice(&post_apply_checksum.to_be_bytes());
    hash.update(&out[index_start..]);
    let file_sum = CHECKSUM_FLAG | hash.finalize();
    out.extend_from_slice(&file_sum.to_be_bytes());
    tracing::trace!(
        min_txid = header.min_txid,
        max_txid = header.max_txid,
        pages = pages.len(),
        bytes = out.len(),
        "encoded LTX file"
    );
    Ok(out)
}

/// Encodes a decoded file again (its stored file checksum is recomputed, not copied).
pub fn encode_file(file: &LtxFile) -> Result<Vec<u8>> {
    encode(&file.header, &file.pages, file.post_apply_checksum)
}

/// Decodes and fully verifies an LTX file: header fields, page order, LZ4 blocks, the page
/// index against the frames, the trailer, the file checksum and (on a snapshot that tracks
/// checksums) the post-apply checksum. Never panics; memory is bounded by the input's size
/// times LZ4's largest expansion.
pub fn decode(bytes: &[u8]) -> Result<LtxFile> {
    decode_inner(bytes, true)
}

#[allow(clippy::too_many_lines)] // one linear walk of the format
fn decode_inner(bytes: &[u8], verify_file_checksum: bool) -> Result<LtxFile> {
    let header = LtxHeader::from_bytes(bytes)?;
    header
        .validate()
        .map_err(|e| corrupt(format!("invalid header: {e}")))?;
    let page_size = header.page_size as usize;
    let lock = header.lock_pgno();
    let mut hash = CRC64.digest();
    hash.update(&bytes[..HEADER_SIZE]);

    let mut r = Cursor {
        buf: bytes,
        pos: HEADER_SIZE,
    };
    let mut pages: Vec<Page> = Vec::new();
    let mut frames: Vec<(u32, u64, u64)> = Vec::new();
    let mut prev = 0u32;
    let mut snapshot_sum = CHECKSUM_FLAG;
    loop {
        let frame_start = r.pos;
        let ph = r.take(PAGE_HEADER_SIZE, "page header")?;
        hash.update(ph);
        let pgno = u32::from_be_bytes([ph[0], ph[1], ph[2], ph[3]]);
        let flags = u16::from_be_bytes([ph[4], ph[5]]);
        if pgno == 0 && flags == 0 {
            break;
        }
        if pgno == 0 {
            return Err(corrupt(format!(
                "page header at offset {frame_start} has page number 0 with flags 0x{flags:04x}"
            )));
        }
        if flags & !PAGE_FLAG_SIZE != 0 {
            return Err(corrupt(format!(
                "page header at offset {frame_start} (page {pgno}) has unknown flags 0x{flags:04x}"
            )));
        }
        if flags & PAGE_FLAG_SIZE == 0 {
            return Err(corrupt(format!(
                "page {pgno} at offset {frame_start} uses the legacy LZ4-frame encoding (flag 0x0001 clear), which this decoder does not read"
            )));
        }
        if pgno <= prev {
            return Err(corrupt(format!(
                "page {pgno} at offset {frame_start} follows page {prev}: pages must ascend"
            )));
        }
        if pgno > header.commit {
            return Err(corrupt(format!(
                "page {pgno} at offset {frame_start} is past the commit size of {} pages",
                header.commit
            )));
        }
        if pgno == lock {
            return Err(corrupt(format!(
                "page {pgno} at offset {frame_start} is the lock page, which is never stored"
            )));
        }
        let expected = next_snapshot_pgno(prev, lock);
        if header.is_snapshot() && pgno != expected {
            return Err(corrupt(format!(
                "snapshot page at offset {frame_start}: expected page {expected}, found page {pgno}"
            )));
        }
        let size_bytes = r.take(4, "page data size")?;
        hash.update(size_bytes);
        let size = u32::from_be_bytes([size_bytes[0], size_bytes[1], size_bytes[2], size_bytes[3]])
            as usize;
        let bound = lz4_flex::block::get_maximum_output_size(page_size);
        if size == 0 || size > bound {
            return Err(corrupt(format!(
                "page {pgno} at offset {frame_start}: compressed size {size} is outside 1..={bound} for a {page_size}-byte page"
            )));
        }
        let block = r.take(size, "compressed page data")?;
        let mut data = vec![0u8; page_size];
        match lz4_flex::block::decompress_into(block, &mut data) {
            Ok(n) if n == page_size => {}
            Ok(n) => {
                return Err(corrupt(format!(
                    "page {pgno} at offset {frame_start}: LZ4 block decompresses to {n} bytes, expected {page_size}"
                )));
            }
            Err(e) => {
                return Err(corrupt(format!(
                    "page {pgno} at offset {frame_start}: bad LZ4 block of {size} bytes: {e}"
                )));
            }
        }
        hash.update(&data);
        if header.is_snapshot() {
            snapshot_sum = CHECKSUM_FLAG | (snapshot_sum ^ page_checksum(pgno, &data));
        }
        frames.push((pgno, frame_start as u64, (r.pos - frame_start) as u64));
        pages.push(Page { pgno, data });
        prev = pgno;
    }
    if header.is_snapshot() {
        let expected = snapshot_page_count(header.commit, lock);
        if pages.len() as u64 != expected {
            return Err(corrupt(format!(
                "snapshot holds {} pages, expected {expected} for a commit of {} pages",
                pages.len(),
                header.commit
            )));
        }
    }

    let index_start = r.pos;
    for (i, &(pgno, offset, size)) in frames.iter().enumerate() {
        let at = r.pos;
        let e_pgno = r.uvarint("page index page number")?;
        let e_offset = r.uvarint("page index offset")?;
        let e_size = r.uvarint("page index size")?;
        if (e_pgno, e_offset, e_size) != (u64::from(pgno), offset, size) {
            return Err(corrupt(format!(
                "page index entry #{i} at offset {at}: expected (page {pgno}, offset {offset}, size {size}), found (page {e_pgno}, offset {e_offset}, size {e_size})"
            )));
        }
    }
    let at = r.pos;
    let end = r.uvarint("page index end marker")?;
    if end != 0 {
        return Err(corrupt(format!(
            "page index at offset {at}: expected the end marker 0 after {} entries, found {end}",
            frames.len()
        )));
    }
    let index_len = (r.pos - index_start) as u64;
    let at = r.pos;
    let stored_len = r.u64_named("page index size")?;
    if stored_len != index_len {
        return Err(corrupt(format!(
            "page index size at offset {at}: expected {index_len}, found {stored_len}"
        )));
    }
    let trailer_at = r.pos;
    let remaining = bytes.len() - trailer_at;
    if remaining != TRAILER_SIZE {
        return Err(corrupt(format!(
            "trailer at offset {trailer_at}: expected exactly {TRAILER_SIZE} bytes to the end of the file, found {remaining}"
        )));
    }
    let post_apply_checksum = r.u64_named("post-apply checksum")?;
    let stored_file_sum = r.u64_named("file checksum")?;
    hash.update(&bytes[index_start..trailer_at + 8]);
    let computed_file_sum = CHECKSUM_FLAG | hash.finalize();
    if verify_file_checksum && stored_file_sum != computed_file_sum {
        return Err(corrupt(format!(
            "file checksum at offset {}: expected {computed_file_sum:016x}, found {stored_file_sum:016x}",
            trailer_at + 8
        )));
    }
    validate_post_apply(&header, post_apply_checksum).map_err(|e| corrupt(e.to_string()))?;
    if header.is_snapshot() && !header.no_checksum() && post_apply_checksum != snapshot_sum {
        return Err(corrupt(format!(
            "post-apply checksum at offset {trailer_at}: the snapshot's pages give {snapshot_sum:016x}, found {post_apply_checksum:016x}"
        )));
    }
    Ok(LtxFile {
        header,
        pages,
        post_apply_checksum,
        file_checksum: if verify_file_checksum {
            stored_file_sum
        } else {
            computed_file_sum
        },
    })
}

/// Applies `file` to the database image `db`.
///
/// A snapshot replaces the image. An incremental file needs an image of whole pages of the
/// file's page size whose [`database_checksum`] equals the pre-apply checksum (unless the
/// file tracks no checksums); its pages are written, the image is resized to `commit`
/// pages, and the result must match the post-apply checksum. On error `db` is unchanged.
pub fn apply(db: &mut Vec<u8>, file: &LtxFile) -> Result<()> {
    let h = &file.header;
    h.validate()?;
    let page_size = h.page_size as usize;
    let checked = !h.no_checksum();
    if !h.is_snapshot() {
        if !db.len().is_multiple_of(page_size) {
            return Err(FrankenError::db_corrupt(format!(
                "cannot apply LTX {:016x}-{:016x}: the database image is {} bytes, not a multiple of the page size {page_size}",
                h.min_txid,
                h.max_txid,
                db.len()
            )));
        }
        if checked {
            let have = database_checksum(db, h.page_size);
            if have != h.pre_apply_checksum {
                return Err(FrankenError::db_corrupt(format!(
                    "cannot apply LTX {:016x}-{:016x}: pre-apply checksum expected {:016x}, the database has {have:016x}",
                    h.min_txid, h.max_txid, h.pre_apply_checksum
                )));
            }
        }
    }
    let new_len = h.commit as usize * page_size;
    let mut out = if h.is_snapshot() {
        vec![0u8; new_len]
    } else {
        let mut v = db.clone();
        v.resize(new_len.max(v.len()), 0);
        v
    };
    for p in &file.pages {
        if p.data.len() != page_size || p.pgno == 0 || p.pgno > h.commit {
            return Err(FrankenError::out_of_range(
                format!(
                    "page {} of LTX {:016x}-{:016x} (size {} for page size {page_size}, commit {})",
                    p.pgno,
                    h.min_txid,
                    h.max_txid,
                    p.data.len(),
                    h.commit
                ),
                p.pgno,
            ));
        }
        let at = (p.pgno as usize - 1) * page_size;
        out[at..at + page_size].copy_from_slice(&p.data);
    }
    out.truncate(new_len);
    if checked {
        let have = database_checksum(&out, h.page_size);
        if have != file.post_apply_checksum {
            return Err(FrankenError::db_corrupt(format!(
                "after applying LTX {:016x}-{:016x}: post-apply checksum expected {:016x}, the database has {have:016x}",
                h.min_txid, h.max_txid, file.post_apply_checksum
            )));
        }
    }
    *db = out;
    Ok(())
}

/// The replica file name of a file covering `min_txid..=max_txid`: `<min:016x>-<max:016x>.ltx`.
pub fn file_name(min_txid: u64, max_txid: u64) -> String {
    format!("{min_txid:016x}-{max_txid:016x}.ltx")
}

/// Parses a replica file name made by [`file_name`] (lowercase hex only, as Litestream).
pub fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".ltx")?;
    let (a, b) = stem.split_once('-')?;
    let ok = |s: &str| s.len() == 16 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if !ok(a) || !ok(b) {
        return None;
    }
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

fn validate_post_apply(header: &LtxHeader, post: u64) -> Result<()> {
    if header.no_checksum() {
        if post != 0 {
            return Err(FrankenError::out_of_range(
                "LTX trailer post-apply checksum (must be zero in a no-checksum file)",
                format!("{post:016x}"),
            ));
        }
    } else if post & CHECKSUM_FLAG == 0 {
        return Err(FrankenError::out_of_range(
            "LTX trailer post-apply checksum (must be non-zero with bit 63 set)",
            format!("{post:016x}"),
        ));
    } else if header.commit == 0 && post != CHECKSUM_FLAG {
        return Err(FrankenError::out_of_range(
            "LTX trailer post-apply checksum of an empty database (must be 8000000000000000)",
            format!("{post:016x}"),
        ));
    }
    Ok(())
}

/// The page a snapshot holds after `prev` (skipping the lock page).
fn next_snapshot_pgno(prev: u32, lock: u32) -> u32 {
    let next = prev.wrapping_add(1);
    if next == lock {
        next.wrapping_add(1)
    } else {
        next
    }
}

fn snapshot_page_count(commit: u32, lock: u32) -> u64 {
    let c = u64::from(commit);
    if commit >= lock { c - 1 } else { c }
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn corrupt(detail: impl std::fmt::Display) -> FrankenError {
    FrankenError::db_corrupt(format!("LTX file: {detail}"))
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// A bounds-checked reader over a byte slice.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(corrupt(format!(
                "truncated: {what} at offset {} needs {n} bytes, the file has {} left",
                self.pos,
                self.buf.len().saturating_sub(self.pos)
            ))),
        }
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4, "header field")?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        self.u64_named("header field")
    }

    fn u64_named(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// An unsigned LEB128 varint as Go's `binary.Uvarint` writes it (at most 10 bytes).
    fn uvarint(&mut self, what: &str) -> Result<u64> {
        let start = self.pos;
        let mut v = 0u64;
        for i in 0..10u32 {
            let b = self.take(1, what)?[0];
            if i == 9 && b > 1 {
                return Err(corrupt(format!(
                    "{what} at offset {start}: varint overflows 64 bits"
                )));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(corrupt(format!(
            "{what} at offset {start}: varint longer than 10 bytes"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_go_iso() {
        // CRC-64/GO-ISO check value for "123456789".
        assert_eq!(CRC64.checksum(b"123456789"), 0xb909_56c7_75a4_1001);
    }

    #[test]
    fn lock_page() {
        assert_eq!(lock_pgno(4096), 262_145);
        assert_eq!(lock_pgno(65536), 16_385);
    }

    #[test]
    fn uvarint_round_trip() {
        for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut b = Vec::new();
            put_uvarint(&mut b, v);
            let mut c = Cursor { buf: &b, pos: 0 };
            assert_eq!(c.uvarint("x").unwrap(), v);
            assert_eq!(c.pos, b.len());
        }
    }

    #[test]
    fn names() {
        assert_eq!(file_name(1, 0x2a), "0000000000000001-000000000000002a.ltx");
        assert_eq!(
            parse_file_name("0000000000000001-000000000000002a.ltx"),
            Some((1, 42))
        );
        assert_eq!(
            parse_file_name("0000000000000001-000000000000002A.ltx"),
            None
        );
    }
}
