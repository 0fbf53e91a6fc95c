// Swagger UI for this server's API, every file served by the server itself (works offline).
// The bundled Swagger UI (4.x) reads OpenAPI 3.0 only, so it is given the 3.0 rendition of
// /openapi.json; validatorUrl null keeps it from sending the document to swagger.io.
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "docs/openapi-3.0.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
