// Starts Redoc on /api/redoc/ under the page's strict Content-Security-Policy.
(function () {
  "use strict";
  // Redoc writes its styles into <style> elements (styled-components); the policy allows them
  // with this response's nonce only, which Redoc's `nonce` option sets on each. The nonce
  // arrives as this script's own, the one copy the page exposes to script.
  var nonce = document.currentScript.nonce;

  // Redoc 2 shows Redocly's logo from Redocly's CDN in its side menu, whatever the options.
  // The policy's img-src refuses it (a violation, and a request away from the portal), so an
  // image source on another origin is never set, by attribute or by property (React sets
  // both); docs.css hides the empty image, the text link stays.
  function elsewhere(value) {
    var url = new URL(String(value), document.baseURI);
    return url.protocol !== "data:" && url.origin !== window.location.origin;
  }
  var setAttribute = Element.prototype.setAttribute;
  HTMLImageElement.prototype.setAttribute = function (name, value) {
    if (String(name).toLowerCase() === "src" && elsewhere(value)) return;
    setAttribute.call(this, name, value);
  };
  var src = Object.getOwnPropertyDescriptor(HTMLImageElement.prototype, "src");
  Object.defineProperty(HTMLImageElement.prototype, "src", {
    configurable: true,
    enumerable: src.enumerable,
    get: src.get,
    set: function (value) {
      if (!elsewhere(value)) src.set.call(this, value);
    },
  });

  var container = document.getElementById("redoc");
  Redoc.init(
    container.getAttribute("data-spec-url"),
    // Search runs in a Worker made from a blob: URL, which worker-src (script-src 'self')
    // refuses; the side menu lists every operation, so the policy stays whole instead.
    { nonce: nonce, disableSearch: true },
    container
  );
})();
