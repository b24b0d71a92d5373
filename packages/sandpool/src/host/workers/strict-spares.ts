import { join, sep } from 'node:path';
import type { ResolvedKey } from '../../key.js';
import type { Deniable } from '../../protocol/messages.js';
import { CACHE_DIR } from '../../store/layout.js';
import type { PermissionPolicy } from '../../types.js';
import { SPARE_LABEL, type ThreadSettings } from './agent-worker.js';
import { denialsOf, permissionArgs } from './permissions.js';
import type { ModuleLocation } from './resolve.js';
import { type SpareFolder, SpareFolders } from './spare-folders.js';
import { AgentThread } from './thread.js';

/** How every strict spare boots: the flags of one whose folder is `path` (each has its own in its place), and its denials. */
interface Template {
  readonly flags: readonly string[];
  readonly path: string;
  readonly deny: readonly Deniable[];
}

/** Stands for a spare's key in what making its flags may say: a spare has none. */
const SPARE_KEY: ResolvedKey = { swarm: '', snapshot: null, stem: '', text: SPARE_LABEL };

/**
 * A spare's one flag beyond its key's: modules imported at run time from the artifact (what a
 * build cannot see) keep the path they were asked by, its folder's, rather than Node's real
 * path of them, which no spare is granted. An artifact holds no link: only the spare's folder is one.
 */
const KEEP_LINK_PATHS = '--preserve-symlinks';

/**
 * Spare threads for keys under the pool's own strict policy (`'strict'`, or a grant). Each
 * boots with the flags such a key gets, an empty folder of its own (see SpareFolders) in
 * place of the key's folder (and the paths of links kept: KEEP_LINK_PATHS), and with its
 * denials already applied; when a key takes it, that folder shows the key's. Only a key run from an artifact can: a verified bundle, imported
 * from memory (never by a path a link could change), in a folder the store made, which holds
 * no link (a tenant's link there could lead `..` out of it). And only one whose flags and
 * denials are exactly the spare's, its own folder in place of the spare's: the spare is then
 * granted nothing that key would not be, and a key with a grant of its own (a policy's
 * `fsRead`) starts cold.
 */
export class StrictSpares {
  private readonly folders: SpareFolders;
  /** `<root>/.sandpool-cache/`: what is in it only the store makes (artifacts). */
  private readonly storeFolder: string;
  /** Made for the first spare (undefined until then); null: no spare's folder can be made here. */
  private template: Template | null | undefined;
  /** The folder the template was made with, for the first spare to boot. */
  private templateFolder: SpareFolder | null = null;

  constructor(
    root: string,
    private readonly policy: Exclude<PermissionPolicy, 'none'>,
    private readonly settings: ThreadSettings,
    /** The flags every worker gets before its permission model (type stripping). */
    private readonly baseFlags: readonly string[],
  ) {
    this.folders = new SpareFolders(root);
    this.storeFolder = join(root, CACHE_DIR) + sep;
  }

  /** A spare thread, booted now; null when no folder can be made for one. */
  boot(): AgentThread | null {
    const template = this.made();
    if (template === null) return null;
    let folder = this.templateFolder;
    this.templateFolder = null;
    try {
      folder ??= this.folders.make();
    } catch {
      return null; // no more folders now (tmpfs and the root full, or made read-only): no spare
    }
    const own = folder.path;
    const flags = [...template.flags.map((flag) => flag.replaceAll(template.path, own)), KEEP_LINK_PATHS];
    try {
      return new AgentThread(this.settings, flags, { folder, deny: template.deny });
    } catch (error) {
      folder.release();
      throw error;
    }
  }

  /** Whether a key whose worker gets these flags and denials, for its module at `location`, can take a spare. */
  fits(execArgv: readonly string[], deny: readonly Deniable[] | null, location: ModuleLocation): boolean {
    const { folder } = location;
    if (location.sha256 === null || !folder.startsWith(this.storeFolder)) return false;
    const template = this.made();
    if (template === null) return false;
    return (
      same(deny ?? [], template.deny) &&
      same(
        execArgv,
        template.flags.map((flag) => flag.replaceAll(template.path, folder)),
      )
    );
  }

  /** What a key of the pool's policy gets, for an empty folder: made once, with the first spare's folder (kept for it). */
  private made(): Template | null {
    if (this.template !== undefined) return this.template;
    try {
      const folder = this.folders.make();
      // A spare serves bundles only: it imports nothing from package folders; its folder is
      // the pool's own, empty until it links to an artifact, so there is nothing to walk.
      const folders = { folder: folder.path, swarm: folder.path, bundled: true, artifact: true };
      const flags = [...this.baseFlags, ...permissionArgs(this.policy, folders, SPARE_KEY)];
      this.template = { flags, path: folder.path, deny: denialsOf(this.policy, 'thread') ?? [] };
      this.templateFolder = folder;
    } catch {
      this.template = null; // no folder for a spare here: strict keys start cold
    }
    return this.template;
  }

  close(): void {
    this.templateFolder?.release();
    this.templateFolder = null;
    this.folders.close();
  }
}

function same<T extends string>(a: readonly T[], b: readonly T[]): boolean {
  return a.length === b.length && a.every((item, i) => item === b[i]);
}
