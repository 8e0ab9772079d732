// Benchmark guest: the componentize-js hello, in the fetch-event style StarlingMonkey
// serves wasi:http/incoming-handler with (what a JavaScript author writes first).
addEventListener("fetch", (event) =>
  event.respondWith(
    new Response("hello from componentize-js\n", {
      headers: { "content-type": "text/plain" },
    }),
  ),
);
