// One step of the runner as its command line sees it: what it does, its flags, and how it is run.
import { Flags, FlagSpecs } from "./flags";
import { Out } from "./reports";

export interface Step {
    summary: string;
    /** Takes --synapse: stop those containers first; before the switch, start them again if the step fails. */
    stopsSynapse?: "before" | "around";
    /** Names the old cluster with --old: a failure lifts its write fence (fence.ts) before Synapse starts again. */
    fencesOld?: true;
    flags: FlagSpecs;
    run(flags: Flags, out: Out): Promise<void>;
}
