import { type SnapshotInfo, SnapshotInfoSchema } from 'sandpool';
import { z } from 'zod';
import { answerError, expectBody, type ServerTarget, send } from './server-client.js';

const OneSchema = z.object({ snapshot: SnapshotInfoSchema });
const ListSchema = z.object({ snapshots: z.array(SnapshotInfoSchema) });

/** The snapshot verbs of `SnapshotStore`, against a running server's store over HTTP. */
export class RemoteSnapshots {
  constructor(private readonly target: ServerTarget) {}

  async create(swarm: string, name: string): Promise<SnapshotInfo> {
    return expectBody(OneSchema, await send(this.target, 'POST', pathOf(swarm, name))).snapshot;
  }

  async list(swarm: string): Promise<SnapshotInfo[]> {
    return expectBody(ListSchema, await send(this.target, 'GET', pathOf(swarm))).snapshots;
  }

  async remove(swarm: string, name: string): Promise<void> {
    const answer = await send(this.target, 'DELETE', pathOf(swarm, name));
    if (answer.status !== 204) throw answerError(answer);
  }

  async point(swarm: string, name: string, target: string): Promise<SnapshotInfo> {
    const path = `/v1/swarms/${encodeURIComponent(swarm)}/channels/${encodeURIComponent(name)}`;
    return expectBody(OneSchema, await send(this.target, 'PUT', path, { target })).snapshot;
  }

  async verify(swarm: string, name: string): Promise<SnapshotInfo> {
    return expectBody(OneSchema, await send(this.target, 'POST', `${pathOf(swarm, name)}/verify`)).snapshot;
  }
}

function pathOf(swarm: string, name?: string): string {
  const base = `/v1/swarms/${encodeURIComponent(swarm)}/snapshots`;
  return name === undefined ? base : `${base}/${encodeURIComponent(name)}`;
}
