// A step that cannot go on says why in one sentence. The CLI prints `message` alone, so it must read well to
// someone who runs `pulumi up` and sees only this line.
export class StepError extends Error {
    constructor(
        message: string,
        readonly details: string[] = [],
    ) {
        super(message);
    }
}
