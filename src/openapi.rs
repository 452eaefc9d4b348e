//! The OpenAPI 3 description served at `/openapi.json`.

use serde_json::{json, Value};

/// The OpenAPI document of every route.
pub fn document() -> Value {
    let error = json!({"$ref": "#/components/schemas/Error"});
    let err = |description: &str| json!({"description": description, "content": {"application/json": {"schema": error}}});
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "VirtualFit",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Virtual try-on: a person photo and a garment photo in, the person wearing the garment out."
        },
        "paths": {
            "/tryon": {"post": {
                "summary": "Render the person wearing the garment",
                "security": [{"bearer": []}, {}],
                "parameters": [
                    {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["jpeg", "png"]}},
                    {"name": "quality", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}}
                ],
                "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {
                    "type": "object",
                    "required": ["person_image", "cloth_image"],
                    "properties": {
                        "person_image": {"type": "string", "format": "binary", "description": "Person photo (JPEG, PNG or WebP)."},
                        "cloth_image": {"type": "string", "format": "binary", "description": "Garment product photo on a plain light background."},
                        "cloth_mask": {"type": "string", "format": "binary", "description": "Optional garment mask, white = garment."}
                    }
                }}}},
                "responses": {
                    "200": {
                        "description": "The try-on image, cropped to the person photo's aspect ratio.",
                        "headers": {
                            "x-request-id": {"schema": {"type": "string"}},
                            "x-model": {"schema": {"type": "string"}},
                            "x-batch-size": {"schema": {"type": "integer"}},
                            "x-queue-time-ms": {"schema": {"type": "number"}},
                            "x-inference-time-ms": {"schema": {"type": "number"}}
                        },
                        "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                                    "image/png": {"schema": {"type": "string", "format": "binary"}}}
                    },
                    "400": err("Not multipart, a missing or duplicated part, or a malformed body (`bad_request`)."),
                    "401": err("Wrong or missing bearer token (`unauthorized`)."),
                    "413": err("Body over --max-body-bytes (`payload_too_large`)."),
                    "415": err("A part that is not a supported image format (`unsupported_media_type`)."),
                    "422": err("Undecodable, empty or too large image (`invalid_image`)."),
                    "429": err("Queue full; see Retry-After (`overloaded`)."),
                    "503": err("Not ready or draining; see Retry-After (`unavailable`)."),
                    "504": err("Waited past --request-timeout-s before its batch ran (`deadline_exceeded`)."),
                    "500": err("Model or device failure (`internal`).")
                }
            }},
            "/livez": {"get": {"summary": "Liveness", "responses": {"200": {"description": "The process serves."}}}},
            "/readyz": {"get": {"summary": "Readiness", "responses": {
                "200": {"description": "Model loaded and warmed up, not draining."},
                "503": err("Warming up or draining (`unavailable`).")
            }}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Prometheus text format.", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/v1/models": {"get": {"summary": "The served model", "responses": {"200": {"description": "Model name, device, resolution and batch limits.", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3 document."}}}}
        },
        "components": {
            "schemas": {"Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {
                    "error": {"type": "string", "enum": ["bad_request", "unauthorized", "payload_too_large", "unsupported_media_type", "invalid_image", "overloaded", "unavailable", "deadline_exceeded", "internal"]},
                    "message": {"type": "string"}
                }
            }},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        }
    })
}
