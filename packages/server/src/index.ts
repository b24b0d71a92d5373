export { checkConfig, defineConfig, type ListenSettings, type SandpoolConfig } from './config.js';
export type { CauseBody, ErrorBody } from './errors.js';
export { type ServerOptions, type ServerSettings, ServerSettingsSchema } from './options.js';
export { createServer, type SandpoolServer } from './server.js';
export { HTTP_ERROR_CODES, type HttpErrorCode, type ServerErrorCode, statusOf } from './status.js';
export type { StoreReport, StoreState, StoreStatus } from './store-state.js';
