//! The OpenAPI 3 document served at `/openapi.json`, generated from the handlers' annotations
//! and, for the forms' model options, from the served model's declaration.
//! Parts the forms do not name are ignored by the server, and allowed here with plain names;
//! the served document describes `webhook_url` as
//! this server's flags allow it: absent without `--webhook-secret`, else a pattern of the URLs
//! `--webhook-allow-hosts` permits, so that a schema-valid request is one the server accepts.

use utoipa::openapi::schema::{AdditionalProperties, Schema};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{Modify, OpenApi};

use crate::jobs::webhook::WebhookConfig;
use crate::models::OptionSpec;

use super::{events, jobs, masks, routes, tryon};
use crate::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "VirtualFit",
        description = "Virtual try-on: a person photo and a garment photo in, the person wearing the garment out."
    ),
    paths(
        tryon::tryon_handler,
        masks::masks_handler,
        jobs::submit_handler,
        jobs::status_handler,
        jobs::result_handler,
        jobs::cancel_handler,
        events::events_handler,
        routes::livez,
        routes::readyz,
        routes::metrics,
        routes::models,
        routes::openapi
    ),
    components(schemas(
        ErrorBody,
        tryon::TryOnForm,
        masks::MaskForm,
        routes::ModelsBody,
        jobs::JobForm,
        crate::jobs::JobView
    )),
    modifiers(&BearerAuth, &ClosedForms)
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

/// The multipart forms: other parts are ignored, and their names are plain (a part name that
/// breaks the multipart headers is refused).
struct ClosedForms;

/// The names other parts may have.
pub const OTHER_PART_NAMES: &str = "^[A-Za-z0-9_.-]{1,64}$";

impl Modify for ClosedForms {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (_, form) in forms(openapi) {
            form.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(true)));
            form.property_names = Some(Box::new(Schema::Object(
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some(OTHER_PART_NAMES))
                    .build(),
            )));
        }
    }
}

/// The forms' schemas, by name.
fn forms(
    openapi: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = (&String, &mut utoipa::openapi::schema::Object)> {
    openapi
        .components
        .iter_mut()
        .flat_map(|c| c.schemas.iter_mut())
        .filter(|(name, _)| matches!(name.as_str(), "JobForm" | "TryOnForm" | "MaskForm"))
        .filter_map(|(name, schema)| match schema {
            RefOr::T(Schema::Object(o)) => Some((name, o)),
            _ => None,
        })
}

/// The document, with the crate's version.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The document as this server serves it: both forms carry the served model's options, as the
/// model declares them, and `webhook_url` is as the webhook flags allow.
pub fn served_document(
    webhooks: &WebhookConfig,
    model_options: &[OptionSpec],
) -> utoipa::openapi::OpenApi {
    let mut doc = document();
    for (_, form) in forms(&mut doc) {
        for option in model_options {
            form.properties
                .insert(option.name.to_string(), option.openapi_schema().into());
        }
    }
    for (name, form) in forms(&mut doc) {
        if name != "JobForm" {
            continue;
        }
        match webhooks.url_pattern() {
            None => {
                form.properties.remove(super::jobs::WEBHOOK_FIELD);
            }
            Some(pattern) => {
                if let Some(RefOr::T(Schema::Object(url))) =
                    form.properties.get_mut(super::jobs::WEBHOOK_FIELD)
                {
                    url.pattern = Some(pattern);
                }
            }
        }
    }
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
        assert_eq!(props["metadata"]["maxLength"], 128, "512 bytes of UTF-8");
        assert_eq!(
            doc["components"]["schemas"]["JobForm"]["propertyNames"]["pattern"],
            OTHER_PART_NAMES
        );
        // Every code is documented on some route.
        let text = doc["paths"].to_string();
        for code in ApiError::CODES {
            assert!(
                text.contains(&format!("`{code}`")),
                "code {code} documented"
            );
        }
        // The paths are checked on the served document (tests/server/http_api.rs).
    }

    #[test]
    fn the_served_form_describes_the_webhook_urls_this_server_accepts() {
        use crate::jobs::webhook::WebhookConfig;
        let config = |secret: Option<&str>| WebhookConfig {
            secret: secret.map(str::to_string),
            allow: ["hooks.example.com", "http://127.0.0.1:9000", "[::1]"]
                .iter()
                .map(|a| a.parse().expect("entry"))
                .collect(),
            retry_base: std::time::Duration::from_secs(20),
        };
        let off = serde_json::to_value(served_document(&config(None), &[])).expect("json");
        let form = &off["components"]["schemas"]["JobForm"]["properties"];
        assert!(
            form.get(jobs::WEBHOOK_FIELD).is_none(),
            "no webhooks: no field"
        );
        let on = serde_json::to_value(served_document(&config(Some("k")), &[])).expect("json");
        let pattern = on["components"]["schemas"]["JobForm"]["properties"][jobs::WEBHOOK_FIELD]
            ["pattern"]
            .as_str()
            .expect("a pattern")
            .to_string();
        assert_eq!(
            pattern,
            "^(https://hooks\\.example\\.com(:[1-9][0-9]{0,3})?\
             |https://127\\.0\\.0\\.1:9000|http://127\\.0\\.0\\.1:9000\
             |https://\\[::1\\](:443)?)([/?#][!-~]*)?$"
        );
    }

    #[test]
    fn the_served_forms_document_the_model_options() {
        use crate::models::{registry::REGISTRY, OptionLimits};
        let webhooks = crate::jobs::webhook::WebhookConfig {
            secret: None,
            allow: Vec::new(),
            retry_base: std::time::Duration::from_secs(20),
        };
        for family in REGISTRY {
            let options = family.options(&OptionLimits { max_steps: 40 });
            let doc = serde_json::to_value(served_document(&webhooks, &options)).expect("json");
            for form in ["TryOnForm", "JobForm"] {
                let props = &doc["components"]["schemas"][form]["properties"];
                for option in &options {
                    let schema = &props[option.name];
                    assert_eq!(
                        schema["description"],
                        option.help,
                        "{} {form}.{}",
                        family.name(),
                        option.name
                    );
                    if let crate::models::OptionKind::Integer { max, .. } = option.kind {
                        assert_eq!(schema["maximum"], max as f64);
                    }
                }
            }
        }
    }
}
