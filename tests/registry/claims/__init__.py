"""A test-only mirrored resource: insurance claims under accounts (the sandbox's
`sandbox.testapps.claims`). It proves the portal's registry (integrations/resources.py): this
package is a model, its migration and one registry entry (apps.py), and nothing in
integrations/ names it. Installed only by tests/registry/settings.py."""
