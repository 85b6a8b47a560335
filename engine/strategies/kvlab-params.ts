/**
 * kvlab's tuned parameters: the one versioned place they live. `KVLAB_DEFAULTS`
 * (engine/strategies/kvlab.ts) reads them; every run records `strategy_params` in config.json
 * and this version in its summary (`kvlab_params_version`).
 *
 * How they were chosen (notebooks/analyses/tune.ts, protocol notebooks/analyses/protocol.ts):
 * a grid over (queueWeight, arrivalWeight) ∈ {1, 2, 3}² on the *tuning set only* — the first half
 * of the Mooncake conversation trace and two generated agent traces (seeds 1, 2), 16 × the
 * measured H100 profile — maximising the capacity under the protocol's SLO, then the mean TTFT
 * at 0.5× and 1× capacity. The evaluation set (the trace's second half, agent traces of other
 * seeds, the Splitwise code trace, synthetic RAG of other seeds, 8/16/32 instances) was never
 * used to choose them. `KVLAB_THEORY` are the first-order M/G/1 values (Little's law: each
 * request queued behind, and each one arriving during the added work, waits that work once).
 * The tuning (docs/EVALUATION.md, version 2026-12-01.2) chose exactly the theory values: (1, 1)
 * had the highest mean capacity of the grid (1.92 vs 1.81 for the previous hand-picked (3, 3)).
 */
import type { KvlabParams } from './kvlab.js';

/** Version of the tuned values (bump with every change; docs/EVALUATION.md records the tuning run). */
export const KVLAB_PARAMS_VERSION = '2026-12-01.2';

/** The tuned values (see the module doc). */
export const KVLAB_TUNED: Pick<KvlabParams, 'queueWeight' | 'arrivalWeight'> = { queueWeight: 1, arrivalWeight: 1 };

/** kvlab's cost parameters that are not feature switches (engine/strategies/kvlab.ts `KvlabParams`). */
export type KvlabCostParams = Pick<KvlabParams, 'workWeight' | 'queueWeight' | 'arrivalWeight' | 'rateAlpha' | 'tieMs' | 'tieFrac' | 'tieMaxMs' | 'externality' | 'externalityWeight' | 'rhoMax' | 'workTauMs'>;

/**
 * Every cost parameter of kvlab, in one place: the tuned weights above; the rest fixed, not tuned:
 * workWeight 0 (no cost per ms of work beyond the externality), rateAlpha 0.02 (the arrival-rate
 * EWMA remembers ~50 arrivals), exact ties only (tie* 0 / ∞), the first-order (`linear`)
 * externality (the busy-period form and its ρ estimate, externalityWeight / rhoMax / workTauMs,
 * measured worse on the tuning set, docs/EVALUATION.md).
 */
export const KVLAB_COST: KvlabCostParams = { workWeight: 0, ...KVLAB_TUNED, rateAlpha: 0.02, tieMs: 0, tieFrac: 0, tieMaxMs: Infinity, externality: 'linear', externalityWeight: 1, rhoMax: 0.95, workTauMs: 60_000 };

/** The weights before the protocol existed (chosen by hand on traces the README reported), for comparison. */
export const KVLAB_PREVIOUS: Pick<KvlabParams, 'queueWeight' | 'arrivalWeight'> = { queueWeight: 3, arrivalWeight: 3 };

/** The theory values: first-order externality weights (1, 1). */
export const KVLAB_THEORY: Pick<KvlabParams, 'queueWeight' | 'arrivalWeight'> = { queueWeight: 1, arrivalWeight: 1 };
