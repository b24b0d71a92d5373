/**
 * A seccomp filter (classic BPF, as bubblewrap's `--seccomp` takes it) that keeps a cell from
 * making a user namespace: `unshare` and `clone` with CLONE_NEWUSER fail with EPERM, and
 * `clone3` (whose flags sit in memory a filter cannot read) with ENOSYS, which makes glibc fall
 * back to `clone`. Calls of another ABI (i386, x32), which would carry other numbers, fail
 * with ENOSYS. For a root host, whose cells cannot take bubblewrap's `--disable-userns` (it
 * needs a user namespace of the cell's own, where the drop to the swarm's uid could not be made).
 */

/** The architecture's audit number and its syscall numbers, for the arches Node ships for Linux. */
const ARCHES: Partial<Record<NodeJS.Architecture, { audit: number; clone: number; unshare: number }>> = {
  x64: { audit: 0xc000003e, clone: 56, unshare: 272 },
  arm64: { audit: 0xc00000b7, clone: 220, unshare: 97 },
};
const CLONE3 = 435;
const CLONE_NEWUSER = 0x10000000;
/** x32's syscalls carry this bit under x86-64's audit number. */
const X32_BIT = 0x40000000;

const LD_W_ABS = 0x20;
const JEQ = 0x15;
const JGE = 0x35;
const JSET = 0x45;
const RET = 0x06;
const ALLOW = 0x7fff0000;
const ERRNO = 0x00050000;
const EPERM = 1;
const ENOSYS = 38;
/** Offsets in struct seccomp_data: the syscall's number, the arch, the first argument's low 32 bits (little-endian). */
const NR = 0;
const ARCH = 4;
const ARG0 = 16;

/** The filter for this machine's architecture; null where it has none (bubblewrap then cannot load one). */
export function usernsFilter(arch: NodeJS.Architecture = process.arch): Buffer | null {
  const numbers = ARCHES[arch];
  if (numbers === undefined) return null;
  // [code, jump if true, jump if false, k]; a jump counts the instructions it skips.
  const program: [number, number, number, number][] = [
    [LD_W_ABS, 0, 0, ARCH],
    [JEQ, 1, 0, numbers.audit],
    [RET, 0, 0, ERRNO | ENOSYS],
    [LD_W_ABS, 0, 0, NR],
    [JGE, 8, 0, X32_BIT], // to the last: ENOSYS
    [JEQ, 7, 0, CLONE3], // to the last: ENOSYS
    [JEQ, 2, 0, numbers.unshare], // to the flags' test
    [JEQ, 1, 0, numbers.clone], // to the flags' test
    [RET, 0, 0, ALLOW],
    [LD_W_ABS, 0, 0, ARG0],
    [JSET, 0, 1, CLONE_NEWUSER],
    [RET, 0, 0, ERRNO | EPERM],
    [RET, 0, 0, ALLOW],
    [RET, 0, 0, ERRNO | ENOSYS],
  ];
  const bytes = Buffer.alloc(program.length * 8);
  program.forEach(([code, jt, jf, k], i) => {
    bytes.writeUInt16LE(code, i * 8);
    bytes.writeUInt8(jt, i * 8 + 2);
    bytes.writeUInt8(jf, i * 8 + 3);
    bytes.writeUInt32LE(k >>> 0, i * 8 + 4);
  });
  return bytes;
}
