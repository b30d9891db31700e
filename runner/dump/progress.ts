// Progress lines for long steps (dump, restore): at most one every few seconds, with done, rate and an estimate
// of the time left from the expected total. They go to stderr so `pulumi up` streams them while stdout keeps
// only the step's result.
export class Progress {
    private readonly started = Date.now();
    private lastPrinted = Date.now();

    constructor(
        private readonly step: string,
        private readonly expectedTotal: number,
        private readonly everyMs = Number(process.env.SYNAPSE_PG_PROGRESS_MS ?? 5000),
    ) {}

    update(done: number): void {
        const now = Date.now();
        if (now - this.lastPrinted < this.everyMs) return;
        this.lastPrinted = now;
        process.stderr.write(`${this.line(done)}\n`);
    }

    done(total: number): void {
        const seconds = (Date.now() - this.started) / 1000;
        process.stderr.write(`${this.step}: ${mb(total)} in ${seconds.toFixed(1)} s\n`);
    }

    private line(done: number): string {
        const seconds = (Date.now() - this.started) / 1000;
        const rate = done / Math.max(seconds, 0.001);
        const left = this.expectedTotal > done && rate > 0 ? (this.expectedTotal - done) / rate : 0;
        return `${this.step}: ${mb(done)} of about ${mb(this.expectedTotal)} ${mb(rate)}/s, about ${Math.ceil(left)} s left`;
    }
}

function mb(n: number): string {
    return `${(n / 1e6).toFixed(1)} MB`;
}
