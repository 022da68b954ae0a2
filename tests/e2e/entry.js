// Bundled with esbuild for the e2e page: the npm client, unmodified.
import { Metrics } from "@maveio/metrics";
window.Metrics = Metrics;
