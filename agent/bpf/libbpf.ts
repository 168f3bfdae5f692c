/**
 * The FFI to libbpf (libbpf.so.1, 1.1.x) through koffi: the only module that
 * knows libbpf's C signatures and struct layouts. Everything above it
 * (dataplane.ts) speaks in objects, maps, programs, links and Buffers of the
 * sizes this module reports; nothing above it calls koffi.
 *
 * Conventions of libbpf 1.x that this module turns into exceptions:
 * - functions returning a pointer return NULL and set errno;
 * - functions returning int return -errno (and set errno).
 * Every failure becomes a LibbpfError naming the call, the subject (map,
 * program, path) and the errno, e.g.
 * `bpf_map_update_elem(endpoints): E2BIG (Argument list too long)`.
 *
 * Option structs (bpf_tc_hook, bpf_test_run_opts, ...) are encoded by hand
 * into Buffers at the offsets of /usr/include/bpf/{libbpf,bpf}.h (libbpf 1.1),
 * with `sz` set to the size libbpf 1.1 knows; test/binding-layout.test.ts
 * compiles a C program against those headers and checks every size and offset
 * below. Pointers inside option structs are the addresses of Buffers kept alive
 * for the duration of the call.
 */
import koffi from 'koffi';

const lib = koffi.load('libbpf.so.1');
const libc = koffi.load('libc.so.6');

// ---------------------------------------------------------------- errors

const errnoNames: Map<number, string> = new Map();
for (const [name, value] of Object.entries(koffi.os.errno)) {
  if (!errnoNames.has(value)) errnoNames.set(value, name);
}
// Aliases share a number; use the names the kernel's headers use first.
for (const name of ['EAGAIN', 'EDEADLK', 'EOPNOTSUPP']) {
  const value = koffi.os.errno[name];
  if (value !== undefined) errnoNames.set(value, name);
}

const c_strerror = libc.func('const char *strerror(int errnum)');

/** The symbolic name of an errno value, e.g. 7 → "E2BIG". */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

/** The C library's text for an errno value. */
export function strerror(errno: number): string {
  return (c_strerror(errno) as string | null) ?? `errno ${errno}`;
}

/** A failed libbpf (or bpf syscall) call. */
export class LibbpfError extends Error {
  /** The libbpf function that failed, e.g. "bpf_map_update_elem". */
  readonly call: string;
  /** What it was called on (map or program name, path), if anything. */
  readonly subject: string | undefined;
  /** Positive errno value. */
  readonly errno: number;
  /** Symbolic errno, e.g. "E2BIG". */
  readonly code: string;

  constructor(call: string, errno: number, subject?: string, hint?: string) {
    const code = errnoName(errno);
    const where = subject === undefined ? call : `${call}(${subject})`;
    super(`${where}: ${code} (${strerror(errno)})${hint ? `: ${hint}` : ''}`);
    this.name = 'LibbpfError';
    this.call = call;
    this.subject = subject;
    this.errno = errno;
    this.code = code;
  }
}

export const ENOENT = 2;
export const EEXIST = 17;
export const E2BIG = 7;
export const ENOSPC = 28;
export const EINVAL = 22;
export const ENOLINK = 67;
export const EOPNOTSUPP = 95;

/** int return: negative means -errno. */
function checkInt(ret: number, call: string, subject?: string): number {
  if (ret < 0) throw new LibbpfError(call, -ret, subject);
  return ret;
}

/** pointer return: null means failure, errno says why. */
function checkPtr(ret: bigint | null, call: string, subject?: string): bigint {
  if (ret === null || ret === 0n) {
    const errno = koffi.errno();
    throw new LibbpfError(call, errno === 0 ? EINVAL : errno, subject);
  }
  return ret;
}

// ---------------------------------------------------------------- C types

koffi.opaque('bpf_object');
koffi.opaque('bpf_map');
koffi.opaque('bpf_program');
koffi.opaque('ring_buffer');

const PrintFn = koffi.proto('int libbpf_print_fn(int level, const char *fmt, void *ap)');
const SampleFn = koffi.proto('int ring_buffer_sample_fn(void *ctx, void *data, size_t size)');

const f = {
  // object
  object_open_file: lib.func('bpf_object *bpf_object__open_file(const char *path, void *opts)'),
  object_load: lib.func('int bpf_object__load(bpf_object *obj)'),
  object_close: lib.func('void bpf_object__close(bpf_object *obj)'),
  object_find_map: lib.func('bpf_map *bpf_object__find_map_by_name(bpf_object *obj, const char *name)'),
  object_find_program: lib.func('bpf_program *bpf_object__find_program_by_name(bpf_object *obj, const char *name)'),
  object_next_map: lib.func('bpf_map *bpf_object__next_map(bpf_object *obj, bpf_map *map)'),
  object_next_program: lib.func('bpf_program *bpf_object__next_program(bpf_object *obj, bpf_program *prog)'),
  // map (object side)
  map_name: lib.func('const char *bpf_map__name(bpf_map *map)'),
  map_type: lib.func('int bpf_map__type(bpf_map *map)'),
  map_key_size: lib.func('uint32_t bpf_map__key_size(bpf_map *map)'),
  map_value_size: lib.func('uint32_t bpf_map__value_size(bpf_map *map)'),
  map_max_entries: lib.func('uint32_t bpf_map__max_entries(bpf_map *map)'),
  map_set_max_entries: lib.func('int bpf_map__set_max_entries(bpf_map *map, uint32_t max_entries)'),
  map_set_pin_path: lib.func('int bpf_map__set_pin_path(bpf_map *map, const char *path)'),
  map_set_autocreate: lib.func('int bpf_map__set_autocreate(bpf_map *map, bool autocreate)'),
  map_is_pinned: lib.func('bool bpf_map__is_pinned(bpf_map *map)'),
  map_pin: lib.func('int bpf_map__pin(bpf_map *map, const char *path)'),
  map_fd: lib.func('int bpf_map__fd(bpf_map *map)'),
  // program
  program_name: lib.func('const char *bpf_program__name(bpf_program *prog)'),
  program_fd: lib.func('int bpf_program__fd(bpf_program *prog)'),
  program_type: lib.func('int bpf_program__type(bpf_program *prog)'),
  program_set_autoload: lib.func('int bpf_program__set_autoload(bpf_program *prog, bool autoload)'),
  // link (libbpf objects)
  // link (fds)
  link_create: lib.func('int bpf_link_create(int prog_fd, int target_fd, int attach_type, void *opts)'),
  link_update: lib.func('int bpf_link_update(int link_fd, int new_prog_fd, void *opts)'),
  link_detach_fd: lib.func('int bpf_link_detach(int link_fd)'),
  // tc
  tc_hook_create: lib.func('int bpf_tc_hook_create(void *hook)'),
  tc_hook_destroy: lib.func('int bpf_tc_hook_destroy(void *hook)'),
  tc_attach: lib.func('int bpf_tc_attach(void *hook, void *opts)'),
  tc_detach: lib.func('int bpf_tc_detach(void *hook, void *opts)'),
  tc_query: lib.func('int bpf_tc_query(void *hook, void *opts)'),
  // map fds
  map_lookup_elem: lib.func('int bpf_map_lookup_elem(int fd, void *key, void *value)'),
  map_update_elem: lib.func('int bpf_map_update_elem(int fd, void *key, void *value, uint64_t flags)'),
  map_delete_elem: lib.func('int bpf_map_delete_elem(int fd, void *key)'),
  map_get_next_key: lib.func('int bpf_map_get_next_key(int fd, void *key, void *next_key)'),
  map_update_batch: lib.func('int bpf_map_update_batch(int fd, void *keys, void *values, void *count, void *opts)'),
  map_lookup_batch: lib.func(
    'int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, void *count, void *opts)',
  ),
  map_delete_batch: lib.func('int bpf_map_delete_batch(int fd, void *keys, void *count, void *opts)'),
  // objects in bpffs, info
  obj_get: lib.func('int bpf_obj_get(const char *path)'),
  prog_get_fd_by_id: lib.func('int bpf_prog_get_fd_by_id(uint32_t id)'),
  obj_pin: lib.func('int bpf_obj_pin(int fd, const char *path)'),
  obj_get_info_by_fd: lib.func('int bpf_obj_get_info_by_fd(int fd, void *info, void *info_len)'),
  prog_test_run_opts: lib.func('int bpf_prog_test_run_opts(int prog_fd, void *opts)'),
  // misc
  num_possible_cpus: lib.func('int libbpf_num_possible_cpus(void)'),
  set_print: lib.func('void *libbpf_set_print(libbpf_print_fn *fn)'),
  // ring buffer
  ring_buffer_new: lib.func('ring_buffer *ring_buffer__new(int map_fd, ring_buffer_sample_fn *cb, void *ctx, void *opts)'),
  ring_buffer_poll: lib.func('int ring_buffer__poll(ring_buffer *rb, int timeout_ms)'),
  ring_buffer_consume: lib.func('int ring_buffer__consume(ring_buffer *rb)'),
  ring_buffer_epoll_fd: lib.func('int ring_buffer__epoll_fd(ring_buffer *rb)'),
  ring_buffer_free: lib.func('void ring_buffer__free(ring_buffer *rb)'),
  // libc
  close: libc.func('int close(int fd)'),
  vsnprintf: libc.func('int vsnprintf(void *buf, size_t n, const char *fmt, void *ap)'),
};

/** Close a file descriptor this module handed out. */
export function closeFd(fd: number): void {
  if (fd >= 0) f.close(fd);
}

// ---------------------------------------------------------------- constants

/** enum bpf_map_type values this project meets. */
export const MapType = {
  HASH: 1,
  ARRAY: 2,
  PERCPU_HASH: 5,
  PERCPU_ARRAY: 6,
  LRU_HASH: 9,
  LRU_PERCPU_HASH: 10,
  PERCPU_CGROUP_STORAGE: 21,
  RINGBUF: 27,
} as const;

const PERCPU_MAP_TYPES: ReadonlySet<number> = new Set([
  MapType.PERCPU_HASH,
  MapType.PERCPU_ARRAY,
  MapType.LRU_PERCPU_HASH,
  MapType.PERCPU_CGROUP_STORAGE,
]);

/** enum bpf_attach_type values used here. */
const BPF_XDP = 37;

/** Flags of bpf_map_update_elem. */
export const UpdateFlags = { ANY: 0, NOEXIST: 1, EXIST: 2 } as const;

/** XDP attach modes (linux/if_link.h). */
export const XdpFlags = { UPDATE_IF_NOEXIST: 1 << 0, SKB_MODE: 1 << 1, DRV_MODE: 1 << 2, HW_MODE: 1 << 3 } as const;

/** Flags of bpf_prog_test_run_opts. */
export const TestRunFlags = { RUN_ON_CPU: 1 << 0, XDP_LIVE_FRAMES: 1 << 1, SKB_CHECKSUM_COMPLETE: 1 << 2 } as const;

/** enum bpf_tc_attach_point. */
export const TcAttachPoint = { INGRESS: 1 << 0, EGRESS: 1 << 1, CUSTOM: 1 << 2 } as const;
export type TcAttachPointValue = (typeof TcAttachPoint)[keyof typeof TcAttachPoint];

/** enum bpf_tc_flags. */
const BPF_TC_F_REPLACE = 1 << 0;

/** XDP and TC return codes. */
export const XdpAction = { ABORTED: 0, DROP: 1, PASS: 2, TX: 3, REDIRECT: 4 } as const;
export const TcAction = { UNSPEC: -1, OK: 0, RECLASSIFY: 1, SHOT: 2, PIPE: 3, STOLEN: 4, REDIRECT: 7 } as const;

// ---------------------------------------------------------------- struct layouts (libbpf 1.1 headers, x86-64)

/** Sizes and offsets checked by test/binding-layout.test.ts against the C headers. */
export const layouts = {
  bpf_tc_hook: { size: 24, ifindex: 8, attach_point: 12, parent: 16 },
  bpf_tc_opts: { size: 32, prog_fd: 8, flags: 12, prog_id: 16, handle: 20, priority: 24 },
  bpf_test_run_opts: {
    size: 80,
    data_in: 8,
    data_out: 16,
    data_size_in: 24,
    data_size_out: 28,
    ctx_in: 32,
    ctx_out: 40,
    ctx_size_in: 48,
    ctx_size_out: 52,
    retval: 56,
    repeat: 60,
    duration: 64,
    flags: 68,
    cpu: 72,
    batch_size: 76,
  },
  bpf_map_batch_opts: { size: 24, elem_flags: 8, flags: 16 },
  bpf_link_create_opts: { size: 64, flags: 8 },
  bpf_link_update_opts: { size: 16, flags: 8, old_prog_fd: 12 },
  // Kernel UAPI structs; the kernel accepts any prefix length (info_len).
  bpf_prog_info: { size: 232, type: 0, id: 4, name: 64, run_time_ns: 192, run_cnt: 200, verified_insns: 216 },
  bpf_map_info: { size: 88, type: 0, id: 4, key_size: 8, value_size: 12, max_entries: 16, map_flags: 20, name: 24 },
  bpf_link_info: { size: 48, type: 0, id: 4, prog_id: 8, xdp_ifindex: 16 },
  __sk_buff: { size: 192, len: 0, mark: 8, ingress_ifindex: 36, ifindex: 40, cb: 48 },
  xdp_md: { size: 24, data: 0, data_end: 4, ingress_ifindex: 12, rx_queue_index: 16 },
} as const;

function optsBuffer(size: number): Buffer {
  const b = Buffer.alloc(size);
  b.writeBigUInt64LE(BigInt(size), 0); // sz
  return b;
}

function addressOf(buf: Uint8Array | null | undefined): bigint {
  if (!buf || buf.length === 0) return 0n;
  return koffi.address(buf);
}

function cstring(b: Buffer, offset: number, max: number): string {
  const end = b.indexOf(0, offset);
  return b.toString('utf8', offset, end < 0 || end > offset + max ? offset + max : end);
}

// ---------------------------------------------------------------- logging

/** Where libbpf's messages go; pino's Logger fits. */
export interface LibbpfLogger {
  warn(msg: string): void;
  info(msg: string): void;
  debug(msg: string): void;
}

const LIBBPF_WARN = 0;
const LIBBPF_INFO = 1;

let currentLogger: LibbpfLogger | null = null;
// One buffer for formatting: libbpf calls back synchronously, on this thread.
// Verifier logs are printed through it in one piece, hence the size.
const printBuf = Buffer.alloc(1 << 20);
let printCallback: bigint | null = null;

function onLibbpfPrint(level: number, fmt: string, ap: bigint): number {
  const logger = currentLogger;
  if (!logger) return 0;
  try {
    const n = f.vsnprintf(printBuf, printBuf.length, fmt, ap) as number;
    if (n < 0) return 0;
    const text = printBuf.toString('utf8', 0, Math.min(n, printBuf.length - 1)).replace(/\n+$/, '');
    if (level === LIBBPF_WARN) logger.warn(text);
    else if (level === LIBBPF_INFO) logger.info(text);
    else logger.debug(text);
  } catch {
    // Never throw into C.
  }
  return 0;
}

/**
 * Route libbpf's log (warnings such as the verifier's output, info, debug) to
 * `logger`, or silence it with null. libbpf keeps one global print function,
 * so the last caller wins.
 */
export function setLogger(logger: LibbpfLogger | null): void {
  currentLogger = logger;
  if (printCallback === null) {
    printCallback = koffi.register(onLibbpfPrint, koffi.pointer(PrintFn));
    f.set_print(printCallback);
  }
}

// Silence libbpf's default stderr printer until someone asks for the log.
setLogger(null);

// ---------------------------------------------------------------- CPUs

let possibleCpusCache = 0;

/** Number of possible CPUs: the number of slots of a per-CPU map value. */
export function possibleCpus(): number {
  if (possibleCpusCache === 0) possibleCpusCache = checkInt(f.num_possible_cpus() as number, 'libbpf_num_possible_cpus');
  return possibleCpusCache;
}

/** Bytes between two CPUs' values in a per-CPU map value buffer. */
export function perCpuStride(valueSize: number): number {
  return Math.ceil(valueSize / 8) * 8;
}

// ---------------------------------------------------------------- maps by fd

export interface MapInfo {
  type: number;
  id: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
  name: string;
}

export interface ProgInfo {
  type: number;
  id: number;
  name: string;
  /** Instructions the verifier processed (0 on kernels before 5.16). */
  verifiedInsns: number;
  runTimeNs: bigint;
  runCount: bigint;
}

export interface LinkInfo {
  type: number;
  id: number;
  progId: number;
  /** For XDP links: the interface, 0 once the device is gone. */
  xdpIfindex: number;
}

function objInfo(fd: number, size: number, call: string, subject?: string): Buffer {
  const info = Buffer.alloc(size);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(size, 0);
  checkInt(f.obj_get_info_by_fd(fd, info, len) as number, call, subject);
  return info;
}

export function mapInfoByFd(fd: number, subject?: string): MapInfo {
  const L = layouts.bpf_map_info;
  const b = objInfo(fd, L.size, 'bpf_obj_get_info_by_fd', subject);
  return {
    type: b.readUInt32LE(L.type),
    id: b.readUInt32LE(L.id),
    keySize: b.readUInt32LE(L.key_size),
    valueSize: b.readUInt32LE(L.value_size),
    maxEntries: b.readUInt32LE(L.max_entries),
    flags: b.readUInt32LE(L.map_flags),
    name: cstring(b, L.name, 16),
  };
}

export function progInfoByFd(fd: number, subject?: string): ProgInfo {
  const L = layouts.bpf_prog_info;
  const b = objInfo(fd, L.size, 'bpf_obj_get_info_by_fd', subject);
  return {
    type: b.readUInt32LE(L.type),
    id: b.readUInt32LE(L.id),
    name: cstring(b, L.name, 16),
    verifiedInsns: b.readUInt32LE(L.verified_insns),
    runTimeNs: b.readBigUInt64LE(L.run_time_ns),
    runCount: b.readBigUInt64LE(L.run_cnt),
  };
}

export function linkInfoByFd(fd: number, subject?: string): LinkInfo {
  const L = layouts.bpf_link_info;
  const b = objInfo(fd, L.size, 'bpf_obj_get_info_by_fd', subject);
  return {
    type: b.readUInt32LE(L.type),
    id: b.readUInt32LE(L.id),
    progId: b.readUInt32LE(L.prog_id),
    xdpIfindex: b.readUInt32LE(L.xdp_ifindex),
  };
}

/** Open a pinned object (map, program, link) from bpffs; the caller closes the fd. */
export function objGet(path: string): number {
  return checkInt(f.obj_get(path) as number, 'bpf_obj_get', path);
}

/** A new fd of the loaded program with kernel id `id` (close it with closeFd). */
export function progFdById(id: number): number {
  return checkInt(f.prog_get_fd_by_id(id) as number, 'bpf_prog_get_fd_by_id', `program id ${id}`);
}

/** Pin an fd at a bpffs path. */
export function objPin(fd: number, path: string): void {
  checkInt(f.obj_pin(fd, path) as number, 'bpf_obj_pin', path);
}

/**
 * A map reached through its fd: raw key and value Buffers of the sizes it
 * reports. For per-CPU maps a value is `possibleCpus()` slots of
 * `perCpuStride(valueSize)` bytes.
 */
export class MapFd {
  readonly fd: number;
  readonly name: string;
  readonly type: number;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  readonly perCpu: boolean;
  /** Bytes of one value as the syscalls see it (all CPUs for per-CPU maps). */
  readonly valueBytes: number;
  private readonly owned: boolean;

  constructor(fd: number, info: MapInfo, name: string, owned: boolean) {
    this.fd = fd;
    this.name = name;
    this.type = info.type;
    this.keySize = info.keySize;
    this.valueSize = info.valueSize;
    this.maxEntries = info.maxEntries;
    this.perCpu = PERCPU_MAP_TYPES.has(info.type);
    this.valueBytes = this.perCpu ? perCpuStride(info.valueSize) * possibleCpus() : info.valueSize;
    this.owned = owned;
  }

  /** Wrap an fd (owned: closed by close()). */
  static fromFd(fd: number, name?: string, owned = false): MapFd {
    const info = mapInfoByFd(fd, name);
    return new MapFd(fd, info, name ?? info.name, owned);
  }

  /** Open a pinned map. */
  static fromPin(path: string, name?: string): MapFd {
    const fd = objGet(path);
    try {
      return MapFd.fromFd(fd, name ?? path, true);
    } catch (err) {
      closeFd(fd);
      throw err;
    }
  }

  close(): void {
    if (this.owned) closeFd(this.fd);
  }

  private checkKey(key: Uint8Array, call: string): void {
    if (key.length !== this.keySize) {
      throw new RangeError(`${call}(${this.name}): key is ${key.length} bytes, map wants ${this.keySize}`);
    }
  }

  private checkValue(value: Uint8Array, call: string): void {
    if (value.length !== this.valueBytes) {
      throw new RangeError(`${call}(${this.name}): value is ${value.length} bytes, map wants ${this.valueBytes}`);
    }
  }

  /** A zeroed value buffer of the right size. */
  newValue(): Buffer {
    return Buffer.alloc(this.valueBytes);
  }

  /** The value of `key`, or null when absent. */
  lookup(key: Uint8Array, into?: Buffer): Buffer | null {
    this.checkKey(key, 'bpf_map_lookup_elem');
    const value = into ?? this.newValue();
    this.checkValue(value, 'bpf_map_lookup_elem');
    const ret = f.map_lookup_elem(this.fd, key, value) as number;
    if (ret === -ENOENT) return null;
    checkInt(ret, 'bpf_map_lookup_elem', this.name);
    return value;
  }

  update(key: Uint8Array, value: Uint8Array, flags: number = UpdateFlags.ANY): void {
    this.checkKey(key, 'bpf_map_update_elem');
    this.checkValue(value, 'bpf_map_update_elem');
    checkInt(f.map_update_elem(this.fd, key, value, flags) as number, 'bpf_map_update_elem', this.name);
  }

  /** Delete `key`; false if it was absent. */
  delete(key: Uint8Array): boolean {
    this.checkKey(key, 'bpf_map_delete_elem');
    const ret = f.map_delete_elem(this.fd, key) as number;
    if (ret === -ENOENT) return false;
    checkInt(ret, 'bpf_map_delete_elem', this.name);
    return true;
  }

  /** The key after `key` (the first key when null), or null at the end. */
  nextKey(key: Uint8Array | null): Buffer | null {
    if (key) this.checkKey(key, 'bpf_map_get_next_key');
    const next = Buffer.alloc(this.keySize);
    const ret = f.map_get_next_key(this.fd, key, next) as number;
    if (ret === -ENOENT) return null;
    checkInt(ret, 'bpf_map_get_next_key', this.name);
    return next;
  }

  /** Every key, by get_next_key (a key deleted meanwhile may restart the walk of a hash map). */
  *keys(): Generator<Buffer> {
    let key: Buffer | null = null;
    for (;;) {
      key = this.nextKey(key);
      if (!key) return;
      yield key;
    }
  }

  /**
   * bpf_map_update_batch over `count` packed keys and values. Returns the
   * number of elements applied; when the kernel stops at an element it throws
   * a BatchError carrying how many were applied before it (the element at
   * `applied` is the one that failed).
   */
  updateBatch(keys: Uint8Array, values: Uint8Array, count: number, flags: number = UpdateFlags.ANY): number {
    if (count === 0) return 0;
    if (keys.length < count * this.keySize || values.length < count * this.valueBytes) {
      throw new RangeError(`bpf_map_update_batch(${this.name}): buffers hold fewer than ${count} elements`);
    }
    const cnt = Buffer.alloc(4);
    cnt.writeUInt32LE(count, 0);
    const opts = optsBuffer(layouts.bpf_map_batch_opts.size);
    opts.writeBigUInt64LE(BigInt(flags), layouts.bpf_map_batch_opts.elem_flags);
    const ret = f.map_update_batch(this.fd, keys, values, cnt, opts) as number;
    const applied = cnt.readUInt32LE(0);
    if (ret < 0) throw new BatchError('bpf_map_update_batch', -ret, this.name, applied);
    return applied;
  }

  /** bpf_map_delete_batch; like updateBatch, a failure says how many were deleted first. */
  deleteBatch(keys: Uint8Array, count: number): number {
    if (count === 0) return 0;
    if (keys.length < count * this.keySize) throw new RangeError(`bpf_map_delete_batch(${this.name}): short keys buffer`);
    const cnt = Buffer.alloc(4);
    cnt.writeUInt32LE(count, 0);
    const opts = optsBuffer(layouts.bpf_map_batch_opts.size);
    const ret = f.map_delete_batch(this.fd, keys, cnt, opts) as number;
    const done = cnt.readUInt32LE(0);
    if (ret < 0) throw new BatchError('bpf_map_delete_batch', -ret, this.name, done);
    return done;
  }

  /**
   * Every element through bpf_map_lookup_batch, `chunk` at a time (the
   * kernel's ENOENT comes with the last elements and ends the walk). Yields
   * packed key and value buffers holding `count` elements; they are reused,
   * valid until the next iteration.
   */
  *lookupBatchChunks(chunk = 1024): Generator<{ keys: Buffer; values: Buffer; count: number }> {
    let n = Math.max(1, Math.min(chunk, this.maxEntries));
    let keys = Buffer.alloc(n * this.keySize);
    let values = Buffer.alloc(n * this.valueBytes);
    // The batch token is opaque; hash maps use a u32 bucket, others a key.
    const tokenSize = Math.max(this.keySize, 8);
    let inBatch: Buffer | null = null;
    const outBatch = Buffer.alloc(tokenSize);
    const opts = optsBuffer(layouts.bpf_map_batch_opts.size);
    const cnt = Buffer.alloc(4);
    for (;;) {
      cnt.writeUInt32LE(n, 0);
      const ret = f.map_lookup_batch(this.fd, inBatch, outBatch, keys, values, cnt, opts) as number;
      const got = cnt.readUInt32LE(0);
      if (ret === -ENOSPC && got === 0) {
        // A hash bucket holds more elements than fit: retry the same bucket with more room.
        n *= 2;
        keys = Buffer.alloc(n * this.keySize);
        values = Buffer.alloc(n * this.valueBytes);
        continue;
      }
      if (ret < 0 && ret !== -ENOENT) throw new LibbpfError('bpf_map_lookup_batch', -ret, this.name);
      if (got > 0) yield { keys, values, count: got };
      if (ret === -ENOENT) return;
      inBatch = inBatch ?? Buffer.alloc(tokenSize);
      outBatch.copy(inBatch);
    }
  }

  /** Every element as [key, value] copies (see lookupBatchChunks). */
  *entriesBatch(chunk = 1024): Generator<[Buffer, Buffer]> {
    const ks = this.keySize;
    const vs = this.valueBytes;
    for (const { keys, values, count } of this.lookupBatchChunks(chunk)) {
      for (let i = 0; i < count; i++) {
        yield [Buffer.from(keys.subarray(i * ks, (i + 1) * ks)), Buffer.from(values.subarray(i * vs, (i + 1) * vs))];
      }
    }
  }
}

/** A batch call that stopped part-way: `done` elements were applied first. */
export class BatchError extends LibbpfError {
  readonly done: number;
  constructor(call: string, errno: number, subject: string, done: number) {
    super(call, errno, subject, `stopped after ${done} element(s)`);
    this.name = 'BatchError';
    this.done = done;
  }
}

// ---------------------------------------------------------------- objects, maps, programs

/** A map of an opened (maybe not yet loaded) object. */
export class BpfMap {
  readonly ptr: bigint;
  readonly name: string;
  private readonly object: BpfObject;

  constructor(ptr: bigint, object: BpfObject) {
    this.ptr = ptr;
    this.object = object;
    this.name = f.map_name(ptr) as string;
  }

  get type(): number {
    return f.map_type(this.ptr) as number;
  }
  get keySize(): number {
    return f.map_key_size(this.ptr) as number;
  }
  get valueSize(): number {
    return f.map_value_size(this.ptr) as number;
  }
  get maxEntries(): number {
    return f.map_max_entries(this.ptr) as number;
  }
  /** Before load only. */
  setMaxEntries(n: number): void {
    checkInt(f.map_set_max_entries(this.ptr, n) as number, 'bpf_map__set_max_entries', this.name);
  }
  /**
   * Before load: reuse the map pinned at `path` if there is one (libbpf checks
   * that type, sizes, max_entries and flags match), otherwise create it and pin
   * it there on load.
   */
  setPinPath(path: string | null): void {
    checkInt(f.map_set_pin_path(this.ptr, path) as number, 'bpf_map__set_pin_path', this.name);
  }
  /** Before load: false keeps the map out of the kernel (its BTF stays in the object); no program may use it. */
  setAutocreate(on: boolean): void {
    checkInt(f.map_set_autocreate(this.ptr, on) as number, 'bpf_map__set_autocreate', this.name);
  }
  get isPinned(): boolean {
    return f.map_is_pinned(this.ptr) as boolean;
  }
  /** After load. Path null: the pin path set before. */
  pin(path: string | null = null): void {
    checkInt(f.map_pin(this.ptr, path) as number, 'bpf_map__pin', path ?? this.name);
  }
  /** After load: the map's fd (owned by the object). */
  get fd(): number {
    return checkInt(f.map_fd(this.ptr) as number, 'bpf_map__fd', this.name);
  }
  /** After load: fd-level access (valid while the object is open). */
  handle(): MapFd {
    this.object.assertOpen();
    return MapFd.fromFd(this.fd, this.name, false);
  }
}

export interface TestRunOptions {
  data?: Uint8Array;
  /** Room for the output packet; defaults to data length + 256 when data is given. */
  dataOutSize?: number;
  ctx?: Uint8Array;
  ctxOutSize?: number;
  repeat?: number;
  flags?: number;
  cpu?: number;
  batchSize?: number;
}

export interface TestRunResult {
  retval: number;
  /** Average ns per run over `repeat`. */
  durationNs: number;
  dataOut: Buffer | null;
  ctxOut: Buffer | null;
}

/** BPF_PROG_TEST_RUN on a program fd. */
export function progTestRun(progFd: number, o: TestRunOptions, subject?: string): TestRunResult {
  const L = layouts.bpf_test_run_opts;
  const opts = optsBuffer(L.size);
  const dataIn = o.data && o.data.length > 0 ? Buffer.from(o.data) : null;
  const liveFrames = ((o.flags ?? 0) & TestRunFlags.XDP_LIVE_FRAMES) !== 0;
  const dataOutSize = liveFrames ? 0 : (o.dataOutSize ?? (dataIn ? dataIn.length + 256 : 0));
  const dataOut = dataOutSize > 0 ? Buffer.alloc(dataOutSize) : null;
  const ctxIn = o.ctx && o.ctx.length > 0 ? Buffer.from(o.ctx) : null;
  const ctxOutSize = o.ctxOutSize ?? 0;
  const ctxOut = ctxOutSize > 0 ? Buffer.alloc(ctxOutSize) : null;
  opts.writeBigUInt64LE(addressOf(dataIn), L.data_in);
  opts.writeBigUInt64LE(addressOf(dataOut), L.data_out);
  opts.writeUInt32LE(dataIn?.length ?? 0, L.data_size_in);
  opts.writeUInt32LE(dataOut?.length ?? 0, L.data_size_out);
  opts.writeBigUInt64LE(addressOf(ctxIn), L.ctx_in);
  opts.writeBigUInt64LE(addressOf(ctxOut), L.ctx_out);
  opts.writeUInt32LE(ctxIn?.length ?? 0, L.ctx_size_in);
  opts.writeUInt32LE(ctxOut?.length ?? 0, L.ctx_size_out);
  opts.writeInt32LE(o.repeat ?? 0, L.repeat);
  opts.writeUInt32LE(o.flags ?? 0, L.flags);
  opts.writeUInt32LE(o.cpu ?? 0, L.cpu);
  opts.writeUInt32LE(o.batchSize ?? 0, L.batch_size);
  // The Buffers above stay referenced until the call returns.
  checkInt(f.prog_test_run_opts(progFd, opts) as number, 'bpf_prog_test_run_opts', subject);
  const outLen = opts.readUInt32LE(L.data_size_out);
  const ctxLen = opts.readUInt32LE(L.ctx_size_out);
  return {
    retval: opts.readUInt32LE(L.retval),
    durationNs: opts.readUInt32LE(L.duration),
    dataOut: dataOut ? dataOut.subarray(0, Math.min(outLen, dataOut.length)) : null,
    ctxOut: ctxOut ? ctxOut.subarray(0, Math.min(ctxLen, ctxOut.length)) : null,
  };
}

export class BpfProgram {
  readonly ptr: bigint;
  readonly name: string;
  private readonly object: BpfObject;

  constructor(ptr: bigint, object: BpfObject) {
    this.ptr = ptr;
    this.object = object;
    this.name = f.program_name(ptr) as string;
  }

  /** enum bpf_prog_type (XDP = 6, SCHED_CLS = 3). */
  get type(): number {
    return f.program_type(this.ptr) as number;
  }
  /** Before load: skip loading this program. */
  setAutoload(on: boolean): void {
    checkInt(f.program_set_autoload(this.ptr, on) as number, 'bpf_program__set_autoload', this.name);
  }
  /** After load: the program fd (owned by the object). */
  get fd(): number {
    this.object.assertOpen();
    return checkInt(f.program_fd(this.ptr) as number, 'bpf_program__fd', this.name);
  }
  info(): ProgInfo {
    return progInfoByFd(this.fd, this.name);
  }
  testRun(o: TestRunOptions): TestRunResult {
    return progTestRun(this.fd, o, this.name);
  }

}

export interface OpenOptions {
  /** Called for each map before load (set pin paths, max entries). */
  beforeLoad?: (object: BpfObject) => void;
}

/** An opened BPF ELF object; load() creates its maps and programs in the kernel. */
export class BpfObject {
  private ptr: bigint | null;
  readonly path: string;
  private loaded = false;

  private constructor(ptr: bigint, path: string) {
    this.ptr = ptr;
    this.path = path;
  }

  /** bpf_object__open_file: parse the ELF (nothing in the kernel yet). */
  static open(path: string): BpfObject {
    return new BpfObject(checkPtr(f.object_open_file(path, null) as bigint | null, 'bpf_object__open_file', path), path);
  }

  assertOpen(): bigint {
    if (this.ptr === null) throw new Error(`BPF object ${this.path} is closed`);
    return this.ptr;
  }

  get isLoaded(): boolean {
    return this.loaded;
  }

  load(): void {
    checkInt(f.object_load(this.assertOpen()) as number, 'bpf_object__load', this.path);
    this.loaded = true;
  }

  /** The map `name`; throws if the object has none. */
  map(name: string): BpfMap {
    const p = f.object_find_map(this.assertOpen(), name) as bigint | null;
    if (!p) throw new LibbpfError('bpf_object__find_map_by_name', ENOENT, `${this.path}: ${name}`);
    return new BpfMap(p, this);
  }

  maps(): BpfMap[] {
    const obj = this.assertOpen();
    const out: BpfMap[] = [];
    for (let p = f.object_next_map(obj, null) as bigint | null; p; p = f.object_next_map(obj, p) as bigint | null) {
      out.push(new BpfMap(p, this));
    }
    return out;
  }

  program(name: string): BpfProgram {
    const p = f.object_find_program(this.assertOpen(), name) as bigint | null;
    if (!p) throw new LibbpfError('bpf_object__find_program_by_name', ENOENT, `${this.path}: ${name}`);
    return new BpfProgram(p, this);
  }

  programs(): BpfProgram[] {
    const obj = this.assertOpen();
    const out: BpfProgram[] = [];
    for (let p = f.object_next_program(obj, null) as bigint | null; p; p = f.object_next_program(obj, p) as bigint | null) {
      out.push(new BpfProgram(p, this));
    }
    return out;
  }

  /** Free the object: its fds close; pinned maps and links live on in bpffs. */
  close(): void {
    if (this.ptr !== null) {
      f.object_close(this.ptr);
      this.ptr = null;
    }
  }
}

// ---------------------------------------------------------------- links

/** A link held by its fd (bpf_link_create): used for XDP links with an explicit mode. */
export class LinkFd {
  readonly fd: number;

  private constructor(fd: number) {
    this.fd = fd;
  }

  /** bpf_link_create(BPF_XDP) with XdpFlags.DRV_MODE or SKB_MODE. */
  static createXdp(progFd: number, ifindex: number, xdpFlags: number, subject?: string): LinkFd {
    const opts = optsBuffer(layouts.bpf_link_create_opts.size);
    opts.writeUInt32LE(xdpFlags, layouts.bpf_link_create_opts.flags);
    return new LinkFd(checkInt(f.link_create(progFd, ifindex, BPF_XDP, opts) as number, 'bpf_link_create', subject));
  }

  /** A pinned link (bpf_obj_get). */
  static open(path: string): LinkFd {
    return new LinkFd(objGet(path));
  }

  pin(path: string): void {
    objPin(this.fd, path);
  }

  /** Atomically replace the program (bpf_link_update). */
  update(progFd: number, subject?: string): void {
    const opts = optsBuffer(layouts.bpf_link_update_opts.size);
    checkInt(f.link_update(this.fd, progFd, opts) as number, 'bpf_link_update', subject);
  }

  info(): LinkInfo {
    return linkInfoByFd(this.fd);
  }

  /** Detach from the hook now, even if pinned. */
  detach(): void {
    checkInt(f.link_detach_fd(this.fd) as number, 'bpf_link_detach');
  }

  close(): void {
    closeFd(this.fd);
  }
}

// ---------------------------------------------------------------- TC (clsact)

function tcHook(ifindex: number, attachPoint: number): Buffer {
  const L = layouts.bpf_tc_hook;
  const hook = optsBuffer(L.size);
  hook.writeInt32LE(ifindex, L.ifindex);
  hook.writeUInt32LE(attachPoint, L.attach_point);
  return hook;
}

function tcOpts(handle: number, priority: number, progFd = 0, flags = 0): Buffer {
  const L = layouts.bpf_tc_opts;
  const opts = optsBuffer(L.size);
  opts.writeInt32LE(progFd, L.prog_fd);
  opts.writeUInt32LE(flags, L.flags);
  opts.writeUInt32LE(handle, L.handle);
  opts.writeUInt32LE(priority, L.priority);
  return opts;
}

/** Create the clsact qdisc on `ifindex` (both directions); already there is fine. */
export function tcHookCreate(ifindex: number): void {
  const ret = f.tc_hook_create(tcHook(ifindex, TcAttachPoint.INGRESS | TcAttachPoint.EGRESS)) as number;
  if (ret === -EEXIST) return;
  checkInt(ret, 'bpf_tc_hook_create', `ifindex ${ifindex}`);
}

/** Remove the clsact qdisc of `ifindex`, with every filter on it (anyone's). */
export function tcHookDestroy(ifindex: number): void {
  const ret = f.tc_hook_destroy(tcHook(ifindex, TcAttachPoint.INGRESS | TcAttachPoint.EGRESS)) as number;
  if (ret === -ENOENT || ret === -EINVAL) return; // no qdisc (EINVAL: kernel's answer for a missing clsact)
  checkInt(ret, 'bpf_tc_hook_destroy', `ifindex ${ifindex}`);
}

export interface TcFilter {
  ifindex: number;
  attachPoint: typeof TcAttachPoint.INGRESS | typeof TcAttachPoint.EGRESS;
  handle: number;
  priority: number;
}

/** Attach (or atomically replace) a direct-action filter at a fixed handle and priority; returns the prog id. */
export function tcAttach(filter: TcFilter, progFd: number, subject?: string): number {
  const hook = tcHook(filter.ifindex, filter.attachPoint);
  const opts = tcOpts(filter.handle, filter.priority, progFd, BPF_TC_F_REPLACE);
  checkInt(f.tc_attach(hook, opts) as number, 'bpf_tc_attach', subject ?? `ifindex ${filter.ifindex}`);
  return opts.readUInt32LE(layouts.bpf_tc_opts.prog_id);
}

/** Remove the filter; false if there was none. */
export function tcDetach(filter: TcFilter): boolean {
  const ret = f.tc_detach(tcHook(filter.ifindex, filter.attachPoint), tcOpts(filter.handle, filter.priority)) as number;
  if (ret === -ENOENT || ret === -EINVAL) return false; // EINVAL: no clsact qdisc at all
  checkInt(ret, 'bpf_tc_detach', `ifindex ${filter.ifindex}`);
  return true;
}

/** The id of the program at the filter's handle and priority, or null. */
export function tcQuery(filter: TcFilter): number | null {
  const opts = tcOpts(filter.handle, filter.priority);
  const ret = f.tc_query(tcHook(filter.ifindex, filter.attachPoint), opts) as number;
  if (ret === -ENOENT || ret === -EINVAL) return null;
  checkInt(ret, 'bpf_tc_query', `ifindex ${filter.ifindex}`);
  return opts.readUInt32LE(layouts.bpf_tc_opts.prog_id);
}

// ---------------------------------------------------------------- ring buffer

/**
 * A ring buffer reader: `onSample` gets a copy of each record. Records are
 * delivered from poll() / consume(), on the calling thread; `epollFd` lets an
 * event loop know when to call consume().
 */
export class RingBuffer {
  private ptr: bigint | null;
  private readonly callback: bigint;
  /** Inside poll()/consume(): a close() from a callback must wait until libbpf returns. */
  private busy = false;
  private closeRequested = false;

  constructor(mapFd: number, onSample: (data: Buffer) => void, subject?: string) {
    this.callback = koffi.register((_ctx: bigint | null, data: bigint, size: number | bigint): number => {
      if (this.closeRequested) return 0;
      try {
        onSample(Buffer.from(koffi.view(data, Number(size))));
      } catch {
        // Never throw into C; the consumer owns its errors.
      }
      return 0;
    }, koffi.pointer(SampleFn));
    try {
      this.ptr = checkPtr(f.ring_buffer_new(mapFd, this.callback, null, null) as bigint | null, 'ring_buffer__new', subject);
    } catch (err) {
      koffi.unregister(this.callback);
      throw err;
    }
  }

  private get p(): bigint {
    if (this.ptr === null || this.closeRequested) throw new Error('ring buffer is closed');
    return this.ptr;
  }

  private run(call: string, fn: (p: bigint) => number): number {
    const p = this.p;
    this.busy = true;
    try {
      return checkInt(fn(p), call);
    } finally {
      this.busy = false;
      if (this.closeRequested) this.free();
    }
  }

  /** Wait up to timeoutMs for records and deliver them; returns how many. Blocks the thread. */
  poll(timeoutMs: number): number {
    return this.run('ring_buffer__poll', (p) => f.ring_buffer_poll(p, timeoutMs) as number);
  }

  /** Deliver the records available now, without waiting. */
  consume(): number {
    return this.run('ring_buffer__consume', (p) => f.ring_buffer_consume(p) as number);
  }

  get epollFd(): number {
    return f.ring_buffer_epoll_fd(this.p) as number;
  }

  /** Free the reader; safe from inside the sample callback (takes effect when libbpf returns). */
  close(): void {
    this.closeRequested = true;
    if (!this.busy) this.free();
  }

  private free(): void {
    if (this.ptr !== null) {
      f.ring_buffer_free(this.ptr);
      this.ptr = null;
      koffi.unregister(this.callback);
    }
  }
}

/** koffi's fd watcher, re-exported so the layer above can wait on epollFd without importing koffi. */
export function watchReadable(fd: number, onReadable: () => void): { stop(): void; unref(): void } {
  const h = koffi.node.poll(fd, { readable: true }, () => onReadable());
  return {
    stop: () => {
      h.stop();
      h.close();
    },
    unref: () => h.unref(),
  };
}
