//! The OpenAPI 3 document served at `/openapi.json`, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{jobs, routes, tryon};
use crate::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "VirtualFit",
        description = "Virtual try-on: a person photo and a garment photo in, the person wearing the garment out."
    ),
    paths(
        tryon::tryon_handler,
        jobs::submit_handler,
        jobs::status_handler,
        jobs::result_handler,
        jobs::cancel_handler,
        routes::livez,
        routes::readyz,
        routes::metrics,
        routes::models,
        routes::openapi
    ),
    components(schemas(
        ErrorBody,
        tryon::TryOnForm,
        routes::ModelsBody,
        jobs::JobForm,
        crate::jobs::JobView
    )),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document, with the crate's version.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CLOTH_PART, MASK_PART, PERSON_PART, TRYON_HEADERS};
    use crate::error::ApiError;

    /// The names the annotations spell out are the ones the server uses.
    #[test]
    fn document_names_the_parts_headers_and_codes_the_server_uses() {
        let doc = serde_json::to_value(document()).expect("serialises");
        let tryon = &doc["paths"]["/tryon"]["post"];
        let form = &doc["components"]["schemas"]["TryOnForm"]["properties"];
        for part in [PERSON_PART, CLOTH_PART, MASK_PART] {
            assert!(form.get(part).is_some(), "part {part} documented");
        }
        let required = doc["components"]["schemas"]["TryOnForm"]["required"].to_string();
        assert!(required.contains(PERSON_PART) && required.contains(CLOTH_PART));
        assert!(!required.contains(MASK_PART));
        for h in TRYON_HEADERS {
            assert!(
                tryon["responses"]["200"]["headers"].get(*h).is_some(),
                "header {h} documented"
            );
        }
        let job_form = &doc["components"]["schemas"]["JobForm"]["properties"];
        for field in [
            jobs::PRIORITY_FIELD,
            jobs::WEBHOOK_FIELD,
            jobs::METADATA_FIELD,
            jobs::FORMAT_FIELD,
            jobs::QUALITY_FIELD,
        ] {
            assert!(
                job_form.get(field).is_some(),
                "job field {field} documented"
            );
        }
        // The form's schema is no looser than the server: image parts are non-empty images,
        // and no field may be null (a form has no null).
        for (form, path) in [("JobForm", "/v1/jobs"), ("TryOnForm", "/tryon")] {
            let props = &doc["components"]["schemas"][form]["properties"];
            for part in [PERSON_PART, CLOTH_PART, MASK_PART] {
                assert_eq!(props[part]["minLength"], 1, "{form}.{part}");
                let encoding = &doc["paths"][path]["post"]["requestBody"]["content"]
                    ["multipart/form-data"]["encoding"][part]["contentType"];
                assert!(
                    encoding.as_str().is_some_and(|t| t.contains("image/jpeg")),
                    "{path} {part}: {encoding}"
                );
            }
        }
        let props = &doc["components"]["schemas"]["JobForm"]["properties"];
        assert!(!props.to_string().contains("null"), "{props}");
        assert_eq!(
            (&props["quality"]["minimum"], &props["quality"]["maximum"]),
            (&1.into(), &100.into())
        );
        assert_eq!(props["metadata"]["maxLength"], 512);
        // Every code is documented on some route.
        let text = doc["paths"].to_string();
        for code in ApiError::CODES {
            assert!(
                text.contains(&format!("`{code}`")),
                "code {code} documented"
            );
        }
        // The paths are checked on the served document (tests/http_api.rs).
    }
}
