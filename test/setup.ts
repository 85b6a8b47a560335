// vitest runs the TypeScript sources, where sim/profiles.ts cannot require() the compiled
// schemas module lazily: hand it over up front.
import { registerSchemas } from '../sim/profiles.js';
import * as schemas from '../sim/schemas.js';

registerSchemas(schemas);
