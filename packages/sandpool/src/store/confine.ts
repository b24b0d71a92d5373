/**
 * Where a build may read from: the swarm's own folder (its snapshots aside) and the package
 * folders on the resolution path above it. Everything else on the host (another swarm, a token
 * file, `/proc`) is out of reach of a build, whatever the tenant's links or imports say.
 */
import type { Stats } from 'node:fs';
import { readlink, realpath, stat } from 'node:fs/promises';
import { dirname, join, relative, sep } from 'node:path';
import { readRegularFile, UnsafeFileError } from './safe-read.js';

/** `swarm`: the tenant's own file; `package`: a file of a package folder the operator installed. */
export type Place = 'swarm' | 'package';

export interface BuildInputs {
  /** Real path of `<root>/<swarm>`. */
  readonly swarmReal: string;
  /**
   * Real paths of the `node_modules` folders at the root and above it, where the operator
   * installs packages. Those inside the swarm's folder are the swarm's own. The root's own
   * `node_modules` is one of them: no swarm may take that name.
   */
  readonly packages: readonly string[];
}

export async function buildInputs(rootReal: string, swarm: string): Promise<BuildInputs> {
  const swarmReal = await realpath(join(rootReal, swarm));
  const packages: string[] = [];
  for (let dir = rootReal; ; dir = dirname(dir)) {
    try {
      const real = await realpath(join(dir, 'node_modules'));
      if ((await stat(real)).isDirectory()) packages.push(real);
    } catch {
      // None here: resolution goes on up.
    }
    if (dirname(dir) === dir) break;
  }
  return { swarmReal, packages };
}

export function placeOf(inputs: BuildInputs, real: string): Place | null {
  if (isInside(inputs.swarmReal, real)) {
    return isInside(join(inputs.swarmReal, 'snapshots'), real) ? null : 'swarm';
  }
  return inputs.packages.some((folder) => isInside(folder, real)) ? 'package' : null;
}

export function isInside(folder: string, path: string): boolean {
  return path.startsWith(folder === sep ? sep : folder + sep);
}

/**
 * Reads one build input and proves where its bytes came from: after the descriptor is open
 * (without following a final link, without blocking on a FIFO), the path's real location must
 * be an accepted place and hold the very inode that was opened. A folder on the path swapped
 * for a link before the open is caught by the real path; one swapped back after it, by the
 * inode. A file of the tenant's with a second name is refused: that name may be another
 * swarm's file or a host secret, and proving otherwise would take a walk of the whole disk.
 * Package folders the operator installed keep their hard links (pnpm makes them).
 */
export async function readInput(
  path: string,
  accept: (real: string) => Place | null,
  maxBytes: number,
): Promise<{ bytes: Buffer; place: Place }> {
  const found: { place: Place | null } = { place: null };
  const verify = async (opened: Stats, fd: number): Promise<void> => {
    let real: string;
    let now: Stats;
    try {
      // Where Linux says the open descriptor's file is: the path it was opened by can change
      // between a realpath and a stat of it (a folder on it swapped for a link and back), the
      // descriptor's cannot.
      real = (await readlink(`/proc/self/fd/${fd}`).catch(() => null)) ?? (await realpath(path));
      now = await stat(real);
    } catch (cause) {
      throw new UnsafeFileError('changed', 'moved while it was being read', { cause });
    }
    const place = accept(real);
    found.place = place;
    if (place === null) {
      throw new UnsafeFileError('outside', "leads outside the swarm's folder and its package folders");
    }
    if (now.dev !== opened.dev || now.ino !== opened.ino) {
      throw new UnsafeFileError('changed', 'was swapped for another file while it was being read');
    }
    if (place === 'swarm' && opened.nlink > 1) {
      throw new UnsafeFileError(
        'hard-link',
        `has ${opened.nlink} hard links; a file of the swarm's must have one name (copy it rather than link it)`,
      );
    }
  };
  const bytes = await readRegularFile(path, { maxBytes, verify });
  // verify() ran and accepted it, or the read threw.
  return { bytes, place: found.place ?? 'swarm' };
}

/** A path as a message may show it: relative to the swarm's folder or its package folder, never the host's. */
export function shownPath(inputs: BuildInputs, path: string): string {
  if (isInside(inputs.swarmReal, path)) return relative(inputs.swarmReal, path).split(sep).join('/');
  const at = path.lastIndexOf(`${sep}node_modules${sep}`);
  if (at >= 0)
    return path
      .slice(at + 1)
      .split(sep)
      .join('/');
  return "<outside the swarm's folder>";
}
