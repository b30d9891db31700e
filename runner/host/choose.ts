// Which way a step reaches the database host's folders. Through the engine (helper containers) when the engine is
// not on this machine, or when HOST_FOLDERS_ENV says so (the tests run every step that way too); this machine's
// file system otherwise, which costs nothing in the downtime (a helper container takes most of a second).
import { inspectContainer } from "../docker/containers";
import { HOST_FOLDERS_ENV } from "../names";
import { StepError } from "../step-error";
import { useHostFolders } from "./folders";
import { EngineFolders } from "./through-engine";

/**
 * A helper image the engine surely has: the image of the first of `containers` that exists (the step's clusters),
 * else the first of `images`; looked up once, when the first helper runs.
 */
function helperImageOf(containers: (string | undefined)[], images: (string | undefined)[]): () => Promise<string> {
    let found: Promise<string> | undefined;
    const lookUp = async (): Promise<string> => {
        for (const name of containers.filter((c): c is string => !!c)) {
            const info = await inspectContainer(name);
            if (info) return info.imageId;
        }
        const image = images.find(Boolean);
        if (image) return image;
        throw new StepError(
            "No container or image named on the command line to reach the database host's folders with; give --old or --image.",
        );
    };
    return () => (found ??= lookUp());
}

export function chooseHostFolders(
    engineIsLocal: boolean,
    containers: (string | undefined)[],
    images: (string | undefined)[],
): void {
    if (engineIsLocal && process.env[HOST_FOLDERS_ENV] !== "engine") return;
    useHostFolders(new EngineFolders(helperImageOf(containers, images)));
}
