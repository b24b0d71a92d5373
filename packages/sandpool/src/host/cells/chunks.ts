import { deserialize } from 'node:v8';
import { dataClone } from '../../errors.js';
import type { StreamChunk } from '../../protocol/agent-io.js';
import { deserializeMoving } from '../../protocol/transfer-codec.js';
import type { AgentWorker } from '../workers/agent-worker.js';
import type { Channel } from './channel.js';

/** A chunk from a worker: it must belong to a stream call that is running there. */
export function receiveChunk(channel: Channel, thread: AgentWorker, message: StreamChunk): void {
  const call = channel.callFor(message.id);
  if (call === undefined || thread.terminating) return; // a late chunk of a stream that has ended
  const sink = call.stream;
  if (sink === null) return thread.violate('a chunk for a call that is not a stream');
  const { bytes, moved } = message;
  if (bytes === null) return sink.push(message.value);
  let value: unknown;
  try {
    value = moved === undefined ? deserialize(new Uint8Array(bytes)) : deserializeMoving(bytes, moved);
  } catch (error) {
    call.interrupt(dataClone(call.keyText, 'a chunk cannot be rebuilt in the host', error), 'abort');
    return;
  }
  sink.push(value);
}
