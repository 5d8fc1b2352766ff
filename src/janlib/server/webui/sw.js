// The chat page's service worker: it lets the page start while the server is briefly unreachable.
// Only the page's own files are cached, network first (fresh files whenever the server answers); every
// other request, the API above all, is left alone and goes straight to the network.
// The server serves this file at /sw.js with `const BUILD = {version, files}` put in front: the version
// names the cache (and changes these bytes, so an upgraded server installs a new worker), and files are
// the page's files relative to the worker's scope.
const CACHE_PREFIX = "janlib-webui-";
const CACHE = CACHE_PREFIX + BUILD.version;
const PAGE_FILES = new Set(BUILD.files.map((file) => new URL(file, self.registration.scope).href));

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll([...PAGE_FILES])).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((names) => Promise.all(names.filter((name) => name.startsWith(CACHE_PREFIX) && name !== CACHE)
      .map((name) => caches.delete(name))))
    .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || !PAGE_FILES.has(url.origin + url.pathname)) return;
  event.respondWith(networkFirst(event.request, url.origin + url.pathname));
});

async function networkFirst(request, key) {
  const cache = await caches.open(CACHE);
  let response;
  try {
    response = await fetch(request);
  } catch (error) {
    return (await cache.match(key)) || Promise.reject(error);
  }
  if (response.ok) {
    await cache.put(key, response.clone());
    return response;
  }
  // a server shutting down or starting answers 503: the cached page is better than that
  return (response.status >= 500 && (await cache.match(key))) || response;
}
