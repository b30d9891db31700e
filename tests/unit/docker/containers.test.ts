// What inspectContainer reads (runner/docker/containers.ts): the aliases a container was given on a network.
import { strict as assert } from "node:assert";
import { userAliases } from "../../../runner/docker/containers";

describe("a container's aliases", () => {
    const id = "db3f0c2a91e4" + "7".repeat(52);

    it("leave out the short id Docker adds by itself", () => {
        assert.deepEqual(userAliases(id, ["db", "db3f0c2a91e4"]), ["db"]);
    });

    it("keep an alias that is also a prefix of the id (db, for an id that begins with those hex digits)", () => {
        assert.deepEqual(userAliases(id, ["db", "d", "db3f", "matrix-db"]), ["db", "d", "db3f", "matrix-db"]);
    });
});
