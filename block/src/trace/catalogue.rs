//! The catalogue of every trace event rqemu emits: QEMU's `trace-events` files in one table.
//!
//! QEMU declares each event once (`name(args) "format"` in a `trace-events` file next to the
//! code) and generates its `trace_NAME()` function from that line. rqemu keeps the same single
//! declaration here: the `trace!` macro refuses at compile time an event missing from this
//! table, `-trace help` prints it, and a test checks that every entry still has a call site.
//! `qemu` names QEMU 10's event where QEMU has one (usually the same name, so traces of both
//! read alike); an empty `qemu` marks an event of rqemu's own.

/// One trace event: what `-trace help` lists about it.
pub struct TraceEvent {
    /// The name `trace!` and `-trace PATTERN` use.
    pub name: &'static str,
    /// The arguments it prints, in order.
    pub args: &'static str,
    /// What happened when it fires.
    pub meaning: &'static str,
    /// QEMU 10's event of the same role, or "" for an event QEMU does not have.
    pub qemu: &'static str,
}

const fn ev(
    name: &'static str,
    args: &'static str,
    meaning: &'static str,
    qemu: &'static str,
) -> TraceEvent {
    TraceEvent {
        name,
        args,
        meaning,
        qemu,
    }
}

/// Every event, grouped by layer from the guest down to the worker threads.
#[rustfmt::skip]
pub const EVENTS: &[TraceEvent] = &[
    // The vCPU and PC platform devices (accel/kvm, hw/).
    ev("kvm_run_exit", "cpu_index, reason", "KVM_RUN returned to the vCPU thread", "kvm_run_exit"),
    ev("runstate_set", "current_state, new_state", "the VM's run state changes (stop, cont, an I/O error's stop)", "runstate_set"),
    ev("blk_error_action", "blk, action, operation, error", "a device applies its werror/rerror policy to a failed request", ""),
    ev("pckbd_kbd_write_command", "command", "i8042 controller command byte written", "pckbd_kbd_write_command"),
    ev("pckbd_kbd_write_data", "byte", "i8042 data byte written", "pckbd_kbd_write_data"),
    ev("fw_cfg_select", "key, known", "fw_cfg item selected by the firmware", "fw_cfg_select"),
    ev("pci_cfg_read", "bus:dev.fn, offset, value", "PCI configuration space read", "pci_cfg_read"),
    ev("pci_cfg_write", "bus:dev.fn, offset, value", "PCI configuration space write", "pci_cfg_write"),
    // IDE (hw/ide/core.c): register accesses on the vCPU thread, commands, the interrupt.
    ev("ide_ioport_read", "addr, register, value, bus, IDEState", "IDE task-file register read", "ide_ioport_read"),
    ev("ide_ioport_write", "addr, register, value, bus, IDEState", "IDE task-file register write", "ide_ioport_write"),
    ev("ide_status_read", "addr, value, bus, IDEState", "IDE Alternate Status read (does not acknowledge)", "ide_status_read"),
    ev("ide_ctrl_write", "addr, value, bus", "IDE Device Control write (nIEN, SRST)", "ide_ctrl_write"),
    ev("ide_data_readw", "addr, value, bus, IDEState", "16-bit PIO read of the data port", "ide_data_readw"),
    ev("ide_data_readl", "addr, value, bus, IDEState", "32-bit PIO read of the data port", "ide_data_readl"),
    ev("ide_data_writew", "addr, value, bus, IDEState", "16-bit PIO write of the data port", "ide_data_writew"),
    ev("ide_data_writel", "addr, value, bus, IDEState", "32-bit PIO write of the data port", "ide_data_writel"),
    ev("ide_bus_exec_cmd", "bus, IDEState, command", "an ATA command starts", "ide_bus_exec_cmd"),
    ev("ide_reset", "IDEState", "a drive is reset", "ide_reset"),
    ev("ide_transfer_start", "IDEState, size", "a PIO data phase of size bytes begins", "ide_transfer_start"),
    ev("ide_sector_read", "sector, nsectors", "READ SECTORS asks the block layer for sectors", "ide_sector_read"),
    ev("ide_sector_write", "sector, nsectors", "the guest filled the PIO buffer: the write goes to the block layer", "ide_sector_write"),
    ev("ide_bus_set_irq", "bus, level", "the channel's IRQ 14/15 line changes level (QEMU's ide_bus_set_irq has no event)", ""),
    // The ATAPI CD-ROM (hw/ide/atapi.c): packet commands and their PIO replies.
    ev("ide_atapi_cmd", "IDEState, cmd", "an ATAPI packet command starts", "ide_atapi_cmd"),
    ev("ide_atapi_cmd_read", "IDEState, lba, nb_sectors", "READ(10)/(12) asks the block layer for 2048-byte sectors", "ide_atapi_cmd_read"),
    ev("ide_atapi_cmd_reply_end", "IDEState, packet_transfer_size, elementary_transfer_size, io_buffer_index", "the next DRQ block of a packet reply is prepared", "ide_atapi_cmd_reply_end"),
    ev("ide_atapi_cmd_reply_end_eot", "IDEState, status", "a packet reply is complete (end of transfer)", "ide_atapi_cmd_reply_end_eot"),
    ev("ide_atapi_cmd_reply_end_bcl", "IDEState, byte_count_limit", "the guest's byte count limit sizes the DRQ block", "ide_atapi_cmd_reply_end_bcl"),
    ev("ide_atapi_cmd_reply_end_new", "IDEState, status", "a new DRQ block of the reply is offered to the guest", "ide_atapi_cmd_reply_end_new"),
    ev("ide_atapi_cmd_error", "IDEState, sense, asc", "a packet command fails with CHECK CONDITION", "ide_atapi_cmd_error"),
    // virtio-blk (hw/block/virtio-blk.c, hw/virtio/virtio.c).
    ev("virtio_queue_notify", "vdev, queue", "the guest kicked a queue (ioeventfd seen by the main loop)", "virtio_queue_notify"),
    ev("virtio_blk_handle_read", "vdev, req, sector, nsectors", "a read request popped from the ring", "virtio_blk_handle_read"),
    ev("virtio_blk_handle_write", "vdev, req, sector, nsectors", "a write request popped from the ring", "virtio_blk_handle_write"),
    ev("virtio_blk_handle_discard", "vdev, req, sector, nsectors", "a discard request popped from the ring", ""),
    ev("virtio_blk_handle_write_zeroes", "vdev, req, sector, nsectors, unmap", "a write-zeroes request popped from the ring", ""),
    ev("virtio_blk_req_complete", "vdev, req, status", "a request's status byte is written back", "virtio_blk_req_complete"),
    ev("virtio_notify", "vdev, queue", "used buffers pushed: the device raises the queue interrupt", "virtio_notify"),
    ev("virtio_error", "message", "the guest broke the virtio protocol: the device needs a reset", ""),
    ev("virtio_pci_intx", "pin, level", "the virtio PCI INTx pin changes level (ISR set, or read to clear)", ""),
    ev("virtio_pci_gsi", "gsi, level", "the ISA IRQ that PCI INTx pins share changes level (KVM_IRQ_LINE)", ""),
    // The monitor (monitor/qmp.c, qapi/qmp-dispatch.c) and the qtest protocol (system/qtest.c).
    ev("handle_qmp_command", "mon, req", "a QMP request arrived on a monitor", "handle_qmp_command"),
    ev("monitor_qmp_cmd_in_band", "id", "an in-band command is dispatched on the main loop", "monitor_qmp_cmd_in_band"),
    ev("monitor_qmp_err_in_band", "desc", "an in-band request failed before dispatch (bad JSON, bad shape)", "monitor_qmp_err_in_band"),
    ev("monitor_qmp_respond", "mon, resp", "a response or event is written to a monitor", "monitor_qmp_respond"),
    ev("monitor_protocol_event_emit", "event, data", "an event is sent to every negotiated monitor", "monitor_protocol_event_emit"),
    ev("qtest_command", "line", "a qtest protocol line is answered", ""),
    // The NBD server (nbd/server.c): handshake, requests, replies.
    ev("nbd_negotiate_begin", "", "a client connected: the fixed-newstyle handshake starts", "nbd_negotiate_begin"),
    ev("nbd_negotiate_success", "", "the handshake ended: transmission phase", "nbd_negotiate_success"),
    ev("nbd_negotiate_options_check_option", "option, name", "the client sent a handshake option", "nbd_negotiate_options_check_option"),
    ev("nbd_co_receive_request_decode_type", "cookie, type, name", "a transmission request header was decoded", "nbd_co_receive_request_decode_type"),
    ev("nbd_co_receive_request_payload_received", "cookie, len", "a WRITE request's payload arrived", "nbd_co_receive_request_payload_received"),
    ev("nbd_co_send_chunk_read_hole", "cookie, offset, len", "a structured READ reply chunk says the range is a hole", "nbd_co_send_chunk_read_hole"),
    ev("nbd_co_send_chunk_read", "cookie, offset, len", "a structured READ reply chunk carries data", "nbd_co_send_chunk_read"),
    ev("nbd_co_send_extents", "cookie, extents, context", "a BLOCK_STATUS reply carries extents of one meta context", "nbd_co_send_extents"),
    ev("nbd_co_send_simple_reply", "cookie, error, len", "a simple reply is sent", "nbd_co_send_simple_reply"),
    ev("nbd_co_send_chunk_done", "cookie", "the final chunk of a structured reply is sent", "nbd_co_send_chunk_done"),
    ev("nbd_co_send_chunk_error", "cookie, error, msg", "a structured reply reports an error", "nbd_co_send_chunk_error"),
    // The NBD client (nbd/client.c, block/nbd.c): handshake, requests, replies.
    ev("nbd_receive_negotiate_magic", "magic", "the client read a magic of the server's greeting", "nbd_receive_negotiate_magic"),
    ev("nbd_receive_negotiate_server_flags", "flags", "the client read the server's handshake flags", "nbd_receive_negotiate_server_flags"),
    ev("nbd_receive_starttls_request", "", "the client asks for TLS", "nbd_receive_starttls_request"),
    ev("nbd_send_option_request", "option, name, len", "the client sends a handshake option", "nbd_send_option_request"),
    ev("nbd_receive_option_reply", "option, name, type, len", "the client read an option reply header", "nbd_receive_option_reply"),
    ev("nbd_opt_meta_reply", "context, id", "the server offers a metadata context", "nbd_opt_meta_reply"),
    ev("nbd_receive_negotiate_size_flags", "size, flags", "the client learned the export's size and flags", "nbd_receive_negotiate_size_flags"),
    ev("nbd_send_request", "from, len, cookie, flags, type, name", "the client sends a transmission request", "nbd_send_request"),
    ev("nbd_receive_simple_reply", "error, cookie", "the client read a simple reply header", "nbd_receive_simple_reply"),
    ev("nbd_receive_reply_chunk_header", "flags, type, cookie, length", "the client read a structured reply chunk header", "nbd_receive_reply_chunk_header"),
    ev("nbd_structured_read_compliance", "offset, len", "a READ reply chunk carries data", "nbd_structured_read_compliance"),
    ev("nbd_server_error_msg", "error, msg", "the server sent an error chunk with a message", "nbd_server_error_msg"),
    ev("nbd_protocol_error", "what", "the server broke the protocol: the connection is dropped", ""),
    // BlockBackend (block/block-backend.c).
    ev("blk_co_preadv", "blk, bs, offset, bytes, flags", "a device's read enters the block layer", "blk_co_preadv"),
    ev("blk_co_pwritev", "blk, bs, offset, bytes, flags", "a device's write enters the block layer", "blk_co_pwritev"),
    ev("blk_co_pwrite_zeroes", "blk, offset, bytes, flags", "a write-zeroes enters the block layer", ""),
    ev("blk_co_pdiscard", "blk, offset, bytes", "a discard enters the block layer", ""),
    ev("blk_co_flush", "blk", "a flush enters the block layer", ""),
    ev("blk_aio_complete", "blk, ret", "the completion bottom half calls the device's callback", ""),
    // The generic request path (block.c, block/io.c).
    ev("bdrv_open_common", "bs, node, filename, format_name", "a node is opened: maps `bs 0x...` to a node and file", "bdrv_open_common"),
    ev("bdrv_co_preadv_part", "bs, offset, bytes, flags", "a read reaches one node of the graph", "bdrv_co_preadv_part"),
    ev("bdrv_co_pwritev_part", "bs, offset, bytes, flags", "a write reaches one node of the graph", "bdrv_co_pwritev_part"),
    ev("bdrv_co_pad_request", "bs, head, tail", "an unaligned request is padded to the node's alignment", ""),
    ev("bdrv_co_padding_rmw_read", "bs, offset, bytes", "read-modify-write reads the padding of an unaligned write", ""),
    ev("bdrv_co_do_copy_on_readv", "bs, offset, bytes, cluster_offset, cluster_bytes", "a copy-on-read copies the unallocated clusters a read covers into the node", "bdrv_co_do_copy_on_readv"),
    ev("bdrv_co_wait_serialising", "bs, offset, bytes", "a request waits for an overlapping serialising one", ""),
    ev("bdrv_co_pwrite_zeroes", "bs, offset, bytes, flags", "a write-zeroes reaches one node", "bdrv_co_pwrite_zeroes"),
    ev("bdrv_co_pdiscard", "bs, offset, bytes", "a discard reaches one node", ""),
    ev("bdrv_co_flush", "bs", "a flush reaches one node", ""),
    ev("bdrv_co_truncate", "bs, offset", "a node is resized", ""),
    // Dirty bitmaps (block/dirty-bitmap.c, util/hbitmap.c).
    ev("bdrv_dirty_bitmap_create", "bs, name, granularity", "a dirty bitmap is added to a node", ""),
    ev("bdrv_dirty_bitmap_release", "bs, name", "a dirty bitmap is dropped from a node", ""),
    ev("bdrv_dirty_bitmap_set", "name, offset, bytes", "a completed write marks its range in an enabled bitmap", "hbitmap_set"),
    // Graph changes (block.c, block/io.c): drained sections and node replacement.
    ev("bdrv_drained_begin", "bs", "a drained section begins: new requests to the graph wait", ""),
    ev("bdrv_drained_end", "bs", "a drained section ends: held requests go on", ""),
    ev("bdrv_replace_node", "from, to", "every parent of a node is pointed at another (pivot, filter insertion)", ""),
    // Jobs (job.c, block/stream.c, commit.c, mirror.c, backup.c, block-copy.c).
    ev("job_state_transition", "job, ret, legal, s0, s1", "a job moves through its state machine", "job_state_transition"),
    ev("job_apply_verb", "job, state, verb, legal", "a user command is checked against the job's state", "job_apply_verb"),
    ev("job_completed", "job, ret", "a job's work is over; it finalises or aborts", "job_completed"),
    ev("stream_one_iteration", "job, offset, bytes, copy", "block-stream looked at one chunk and copied it if needed", "stream_one_iteration"),
    ev("commit_one_iteration", "job, offset, bytes, is_allocated", "block-commit looked at one chunk and copied it if allocated above the base", "commit_one_iteration"),
    ev("mirror_start", "bs, target", "a mirror (or active commit) starts", "mirror_start"),
    ev("mirror_one_iteration", "s, offset, bytes", "the mirror copies one dirty area", "mirror_one_iteration"),
    ev("mirror_yield_in_flight", "s, offset, in_flight", "the mirror waits for a free slot among its copies in flight", "mirror_yield_in_flight"),
    ev("mirror_iteration_done", "s, offset, bytes, ret", "one of the mirror's copies in flight ended", "mirror_iteration_done"),
    ev("mirror_before_flush", "s", "nothing is dirty: the mirror flushes the target", "mirror_before_flush"),
    ev("mirror_before_drain", "s, cnt", "the mirror drains the source before it completes", "mirror_before_drain"),
    ev("mirror_before_sleep", "s, cnt, synced", "a ready mirror with nothing to copy sleeps one slice", "mirror_before_sleep"),
    ev("mirror_sync_write", "s, offset, bytes", "write-blocking mode copies a guest write to the target before it completes", ""),
    ev("throttle_group_wait", "group, write, bytes, wait_ns", "a request waits for its throttle group's limits", ""),
    ev("block_copy_process", "bcs, start, bytes", "a backup chunk is saved to the target (by the job or before a guest write)", "block_copy_process"),
    ev("backup_do_cow_enter", "job, offset", "the backup job asks for one chunk to be saved", ""),
    // qcow2 (block/qcow2*.c).
    ev("qcow2_co_preadv_part", "offset, bytes, cluster type", "qcow2 maps one piece of a read", ""),
    ev("qcow2_writev_data", "host offset, bytes, cow head+tail", "qcow2 writes guest data at its host offset", "qcow2_writev_data"),
    ev("qcow2_wait_dependency", "offset", "a write waits for an overlapping cluster allocation", ""),
    ev("qcow2_load_dirty_bitmaps", "nb_bitmaps, directory offset", "the bitmap directory is loaded at open", ""),
    ev("qcow2_store_persistent_dirty_bitmaps", "nb_bitmaps", "persistent bitmaps are written to the image", ""),
    ev("qcow2_l2_allocate", "l1_index, offset", "a new L2 table is allocated", "qcow2_l2_allocate"),
    ev("qcow2_cache_entry_flush", "cache, offset", "a dirty L2 or refcount table is written back", "qcow2_cache_entry_flush"),
    ev("qcow2_alloc_clusters", "offset, n", "host clusters are allocated", ""),
    ev("qcow2_alloc_bytes", "offset, size", "a sub-cluster range is allocated (compressed data)", ""),
    ev("qcow2_alloc_refblock", "index, offset", "a new refcount block is allocated", ""),
    ev("qcow2_grow_reftable", "offset, clusters", "the refcount table is moved to a bigger place", ""),
    // The rbd protocol (block/rbd.c): librbd completes on its own threads, a bottom half resumes the request.
    ev("qemu_rbd_start_co", "cmd, offset, bytes", "an rbd request is handed to librbd", "qemu_rbd_start_co"),
    // The protocol driver and the threads under it (block/file-posix.c, util/, block/io_uring.c).
    ev("file_create", "filename, size", "an image file is created", ""),
    ev("thread_pool_submit_aio", "pool, req", "a blocking call is queued for a worker thread", "thread_pool_submit_aio"),
    ev("thread_pool_complete_aio", "pool, req", "a worker finished the call (printed on the worker thread)", "thread_pool_complete_aio"),
    ev("luring_do_submit", "engine, slot", "a request is queued for io_uring", "luring_do_submit"),
    ev("luring_io_uring_submit", "engine, entries", "queued entries are submitted to the kernel", "luring_io_uring_submit"),
    ev("luring_process_completion", "slot, ret", "an io_uring completion is reaped", "luring_process_completion"),
];

/// Whether `name` is in [`EVENTS`]; `const` so that `trace!` checks its name when compiled.
pub const fn contains(name: &str) -> bool {
    let mut i = 0;
    while i < EVENTS.len() {
        if str_eq(EVENTS[i].name, name) {
            return true;
        }
        i += 1;
    }
    false
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The listing `-trace help` prints: one event a line, name first so `grep` and globs work.
pub fn help() -> String {
    let mut s = String::from("Possible trace events (name(arguments): meaning [QEMU's name]):\n");
    for e in EVENTS {
        let qemu = match e.qemu {
            "" => "rqemu only".to_string(),
            q if q == e.name => "same in QEMU".to_string(),
            q => format!("QEMU: {q}"),
        };
        s.push_str(&format!("{}({}): {} [{qemu}]\n", e.name, e.args, e.meaning));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_lookup_finds_them() {
        for (i, e) in EVENTS.iter().enumerate() {
            assert!(contains(e.name));
            assert!(
                EVENTS[..i].iter().all(|o| o.name != e.name),
                "{} listed twice",
                e.name
            );
        }
        assert!(!contains("blk_co_preadvx"));
        assert!(!contains("blk_co_pread"));
    }

    #[test]
    fn help_lists_every_event_on_its_own_line() {
        let text = help();
        for e in EVENTS {
            assert!(text.lines().any(|l| l.starts_with(&format!("{}(", e.name))));
        }
    }
}
