import { type Command, Option } from 'commander';
import { type SnapshotInfo, SnapshotStore } from 'sandpool';
import { asUsage, badOption } from '../failure.js';
import { type Io, printLine } from '../io.js';
import { RemoteSnapshots } from '../remote-snapshots.js';
import { parseUrl, targetOf } from '../server-client.js';
import { formatTable } from '../table.js';
import { serverTokenOption } from './invalidate.js';

interface StoreOptions {
  readonly root?: string;
  readonly url?: string;
  readonly token?: string;
  readonly json?: boolean;
}

const DIGEST_PREFIX = 12;

export function registerSnapshot(program: Command, io: Io): void {
  const snapshot = program
    .command('snapshot')
    .description('create, list, point, remove or verify snapshots of a swarm');
  const out = (line: string): void => printLine(io.writeOut, line);
  const print = (info: SnapshotInfo, verb: string, options: StoreOptions): void =>
    out(options.json === true ? JSON.stringify(info) : describe(verb, info));

  withStore(snapshot.command('create'))
    .description("freeze the swarm's live folder as a named snapshot")
    .argument('<swarm>')
    .argument('<name>')
    .option('--json', 'print the snapshot info as JSON')
    .action(async (swarm: string, name: string, options: StoreOptions) => {
      print(await storeOf(options).create(swarm, name), 'created', options);
    });

  withStore(snapshot.command('list'))
    .description('list the snapshots of a swarm, oldest first')
    .argument('<swarm>')
    .option('--json', 'print a JSON array')
    .action(async (swarm: string, options: StoreOptions) => {
      const infos = await storeOf(options).list(swarm);
      if (options.json === true) return out(JSON.stringify(infos));
      if (infos.length === 0) return out(`swarm ${swarm} has no snapshots`);
      out(
        formatTable(
          [
            { header: 'name' },
            { header: 'createdAt' },
            { header: 'files', align: 'right' },
            { header: 'bytes', align: 'right' },
            { header: 'digest' },
          ],
          infos.map((info) => [
            info.name,
            info.createdAt,
            String(info.files),
            String(info.bytes),
            info.digest.slice(0, DIGEST_PREFIX),
          ]),
        ),
      );
    });

  withStore(snapshot.command('point'))
    .description('point a name (a channel such as prod) at the content another snapshot names: a deploy or a rollback')
    .argument('<swarm>')
    .argument('<name>')
    .argument('<target>')
    .option('--json', 'print the snapshot info as JSON')
    .action(async (swarm: string, name: string, target: string, options: StoreOptions) => {
      print(await storeOf(options).point(swarm, name, target), `pointed at ${target}:`, options);
    });

  withStore(snapshot.command('remove'))
    .description('remove a snapshot')
    .argument('<swarm>')
    .argument('<name>')
    .action(async (swarm: string, name: string, options: StoreOptions) => {
      await storeOf(options).remove(swarm, name);
      out(`removed ${swarm}@${name}`);
    });

  withStore(snapshot.command('verify'))
    .description('check every file of a snapshot against its manifest')
    .argument('<swarm>')
    .argument('<name>')
    .option('--json', 'print the snapshot info as JSON')
    .action(async (swarm: string, name: string, options: StoreOptions) => {
      print(await storeOf(options).verify(swarm, name), 'verified', options);
    });
}

/** Each verb works on a root on this machine, or on a running server's store (`--url`). */
function withStore(command: Command): Command {
  return command
    .option('--root <dir>', 'folder holding <swarm>/live and <swarm>/snapshots')
    .addOption(new Option('--url <url>', 'a running server instead of --root').argParser(parseUrl))
    .addOption(serverTokenOption());
}

function storeOf(options: StoreOptions): Pick<SnapshotStore, 'create' | 'list' | 'remove' | 'verify' | 'point'> {
  if ((options.root === undefined) === (options.url === undefined)) {
    throw asUsage(badOption('give exactly one of --root <dir> and --url <url>'));
  }
  if (options.url !== undefined) return new RemoteSnapshots(targetOf({ ...options, url: options.url }));
  // From the environment, never a flag: a secret on the command line is visible to every user.
  const secret = process.env.SANDPOOL_SNAPSHOT_SECRET;
  return new SnapshotStore({
    root: options.root as string,
    ...(secret === undefined || secret === '' ? {} : { snapshotSecret: secret }),
  });
}

function describe(verb: string, info: SnapshotInfo): string {
  const digest = info.digest.slice(0, DIGEST_PREFIX);
  const files = info.files === 1 ? '1 file' : `${info.files} files`;
  return `${verb} ${info.swarm}@${info.name}: ${files}, ${info.bytes} bytes, created ${info.createdAt}, digest ${digest}`;
}
