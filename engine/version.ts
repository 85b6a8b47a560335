/** kvlab version written into every run's config.json and summary.json. */
export const KVLAB_VERSION = '0.1.0';
