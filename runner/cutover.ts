// cutover: the switch. After verify passed: the staging container is stopped cleanly and removed (its data stays
// in the new volume or folder, where Pulumi's serving container of the new major picks it up), and the old
// container is stopped cleanly. The old data is never touched; its container stays, stopped, for a revert.
import { inspectContainer, removeContainer, stopContainer, superuserOf } from "./docker";
import { DataLocation } from "./layout";
import { StepError } from "./step-error";
import { advanceMarker, hasServed, readMarkerIn, readTargetState, writeMarkerIn } from "./target";

export interface CutoverInput {
    old: string;
    /** The staging container that verify checked. */
    new: string;
    /** The new cluster's data, image and major: to read the marker once the staging container is gone. */
    data: DataLocation;
    image: string;
    major: number;
}

export interface CutoverResult {
    alreadyDone: boolean;
    stopped: string[];
}

export async function cutover(input: CutoverInput): Promise<CutoverResult> {
    const staging = await inspectContainer(input.new);
    const stopped: string[] = [];
    if (staging) {
        if (!staging.running) throw new StepError(`The staging container "${input.new}" is stopped; run restore and verify again before the switch.`);
        const user = superuserOf(staging);
        const marker = await readMarkerIn(input.new, user);
        if (marker?.state !== "verified") {
            throw new StepError(`The new cluster in "${input.new}" has not passed verify (state: ${marker?.state ?? "no marker"}); the switch happens only after verify.`);
        }
        await writeMarkerIn(input.new, user, advanceMarker(marker, "cutover"));
        await stopContainer(input.new);
        await removeContainer(input.new);
        stopped.push(input.new);
    } else {
        const target = await readTargetState(input.data, input.major, input.image);
        if (!target.marker || !hasServed(target.marker)) {
            throw new StepError(`There is no staging container "${input.new}" and the new data has not been switched to; run restore and verify first.`);
        }
    }
    const old = await inspectContainer(input.old);
    if (old?.running) {
        await stopContainer(input.old);
        stopped.push(input.old);
    }
    return { alreadyDone: stopped.length === 0, stopped };
}
