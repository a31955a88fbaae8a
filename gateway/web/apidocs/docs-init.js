// Renders /openapi.json with Swagger UI; every asset comes from this gateway (no CDN).
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    validatorUrl: null,          // never ask an outside validator about this document
    tryItOutEnabled: false,
  });
});
