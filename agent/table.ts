/**
 * The agent's record of what it applied: endpoint → KV revision, for every
 * member of the region (a million in a large one), plus a mark per entry for
 * the snapshot's mark and sweep.
 *
 * An endpoint is named by its workspace id and 64-bit endpoint id (the region
 * is the agent's own), three 32-bit words; its slot's state byte also says
 * whether it has i6pn (what the resolver lists as a workspace's peers). The table is open addressing with
 * linear probing and backward-shift deletion over typed arrays: about 40
 * bytes per endpoint, outside the JavaScript heap, so a large region adds
 * nothing for the garbage collector to walk (a Map of key strings costs ~3×
 * the memory and every major GC visits each entry).
 */

export interface EndpointId {
  workspace: number;
  /** Endpoint id, high and low 32 bits. */
  hi: number;
  lo: number;
}

/** Slot states: empty, or full, with the I6PN bit for an endpoint that has i6pn. */
const EMPTY = 0;
const FULL = 1;
const I6PN = 2;
const MIN_CAPACITY = 1024;

export class EndpointTable {
  private cap: number;
  private mask: number;
  private keys: Uint32Array; // 3 words per slot
  private revs: Float64Array; // KV revisions are below 2^53
  private state: Uint8Array;
  private marks: Uint16Array;
  private epoch = 1;
  private count = 0;

  constructor(capacity = MIN_CAPACITY) {
    let c = MIN_CAPACITY;
    while (c < capacity * 2) c *= 2;
    this.cap = c;
    this.mask = c - 1;
    this.keys = new Uint32Array(c * 3);
    this.revs = new Float64Array(c);
    this.state = new Uint8Array(c);
    this.marks = new Uint16Array(c);
  }

  get size(): number {
    return this.count;
  }

  /** Bytes the table holds outside the heap (its typed arrays). */
  get bytes(): number {
    return this.keys.byteLength + this.revs.byteLength + this.state.byteLength + this.marks.byteLength;
  }

  private hash(ws: number, hi: number, lo: number): number {
    let h = Math.imul(ws ^ 0x9e3779b9, 0x85ebca6b);
    h = Math.imul(h ^ (h >>> 13) ^ hi, 0xc2b2ae35);
    h = Math.imul(h ^ (h >>> 16) ^ lo, 0x27d4eb2f);
    return (h ^ (h >>> 15)) & this.mask;
  }

  private slotOf(ws: number, hi: number, lo: number): number {
    for (let i = this.hash(ws, hi, lo); ; i = (i + 1) & this.mask) {
      if (this.state[i] === EMPTY) return -1 - i;
      const k = i * 3;
      if (this.keys[k] === ws && this.keys[k + 1] === hi && this.keys[k + 2] === lo) return i;
    }
  }

  /** The revision applied for an endpoint, or undefined. */
  get(id: EndpointId): number | undefined {
    const s = this.slotOf(id.workspace >>> 0, id.hi >>> 0, id.lo >>> 0);
    return s >= 0 ? this.revs[s] : undefined;
  }

  has(id: EndpointId): boolean {
    return this.slotOf(id.workspace >>> 0, id.hi >>> 0, id.lo >>> 0) >= 0;
  }

  /** Record a revision (and whether it has i6pn); `mark` also marks the entry for the current snapshot. */
  set(id: EndpointId, revision: number, mark = false, i6pn = false): void {
    if ((this.count + 1) * 10 > this.cap * 7) this.grow();
    const ws = id.workspace >>> 0;
    const hi = id.hi >>> 0;
    const lo = id.lo >>> 0;
    let s = this.slotOf(ws, hi, lo);
    if (s < 0) {
      s = -1 - s;
      this.keys[s * 3] = ws;
      this.keys[s * 3 + 1] = hi;
      this.keys[s * 3 + 2] = lo;
      this.marks[s] = 0;
      this.count++;
    }
    this.state[s] = i6pn ? FULL | I6PN : FULL;
    this.revs[s] = revision;
    if (mark) this.marks[s] = this.epoch;
  }

  /** Mark an entry for the current snapshot; false if it is not in the table. */
  mark(id: EndpointId): boolean {
    const s = this.slotOf(id.workspace >>> 0, id.hi >>> 0, id.lo >>> 0);
    if (s < 0) return false;
    this.marks[s] = this.epoch;
    return true;
  }

  isMarked(id: EndpointId): boolean {
    const s = this.slotOf(id.workspace >>> 0, id.hi >>> 0, id.lo >>> 0);
    return s >= 0 && this.marks[s] === this.epoch;
  }

  /** A new snapshot: every entry is unmarked. */
  newEpoch(): void {
    this.epoch = this.epoch === 0xffff ? 1 : this.epoch + 1;
    if (this.epoch === 1) this.marks.fill(0);
  }

  delete(id: EndpointId): boolean {
    const s = this.slotOf(id.workspace >>> 0, id.hi >>> 0, id.lo >>> 0);
    if (s < 0) return false;
    this.removeSlot(s);
    return true;
  }

  /** Call `fn` for every entry (the table is not changed). */
  forEachEntry(fn: (workspace: number, hi: number, lo: number, i6pn: boolean) => void): void {
    for (let i = 0; i < this.cap; i++) {
      const st = this.state[i]!;
      if (st !== EMPTY) fn(this.keys[i * 3]!, this.keys[i * 3 + 1]!, this.keys[i * 3 + 2]!, (st & I6PN) !== 0);
    }
  }

  /** Call `fn` for every entry not marked in the current snapshot (the table is not changed). */
  forEachUnmarked(fn: (id: EndpointId) => void): void {
    for (let i = 0; i < this.cap; i++) {
      if (this.state[i] !== EMPTY && this.marks[i] !== this.epoch) fn({ workspace: this.keys[i * 3]!, hi: this.keys[i * 3 + 1]!, lo: this.keys[i * 3 + 2]! });
    }
  }

  /** Remove every entry not marked in the current snapshot; calls `removed` for each. */
  sweepUnmarked(removed: (id: EndpointId) => void): number {
    let n = 0;
    for (let i = 0; i < this.cap; ) {
      if (this.state[i] !== EMPTY && this.marks[i] !== this.epoch) {
        removed({ workspace: this.keys[i * 3]!, hi: this.keys[i * 3 + 1]!, lo: this.keys[i * 3 + 2]! });
        this.removeSlot(i);
        n++;
        continue; // backward shift may have moved another entry into slot i
      }
      i++;
    }
    return n;
  }

  private removeSlot(s: number): void {
    // Backward-shift deletion: pull later entries of the probe chain into the hole.
    let hole = s;
    for (let i = (s + 1) & this.mask; this.state[i] !== EMPTY; i = (i + 1) & this.mask) {
      const home = this.hash(this.keys[i * 3]!, this.keys[i * 3 + 1]!, this.keys[i * 3 + 2]!);
      // Move i into the hole unless its home lies cyclically in (hole, i].
      const between = hole <= i ? home > hole && home <= i : home > hole || home <= i;
      if (between) continue;
      this.keys.copyWithin(hole * 3, i * 3, i * 3 + 3);
      this.revs[hole] = this.revs[i]!;
      this.marks[hole] = this.marks[i]!;
      this.state[hole] = this.state[i]!;
      hole = i;
    }
    this.state[hole] = EMPTY;
    this.marks[hole] = 0;
    this.count--;
  }

  private grow(): void {
    const old = { keys: this.keys, revs: this.revs, state: this.state, marks: this.marks, cap: this.cap };
    this.cap *= 2;
    this.mask = this.cap - 1;
    this.keys = new Uint32Array(this.cap * 3);
    this.revs = new Float64Array(this.cap);
    this.state = new Uint8Array(this.cap);
    this.marks = new Uint16Array(this.cap);
    this.count = 0;
    for (let i = 0; i < old.cap; i++) {
      if (old.state[i] === EMPTY) continue;
      const ws = old.keys[i * 3]!;
      const hi = old.keys[i * 3 + 1]!;
      const lo = old.keys[i * 3 + 2]!;
      const s = -1 - this.slotOf(ws, hi, lo);
      this.state[s] = old.state[i]!;
      this.keys[s * 3] = ws;
      this.keys[s * 3 + 1] = hi;
      this.keys[s * 3 + 2] = lo;
      this.revs[s] = old.revs[i]!;
      this.marks[s] = old.marks[i]!;
      this.count++;
    }
  }
}
