# The admin's audit kinds, and the read-only `support` group.

from django.contrib.auth.management import create_permissions
from django.db import migrations, models

SUPPORT_GROUP = "support"
# What support staff may see in the admin: everything about connections, never an action.
VIEWABLE = ["connection", "connectionevent", "syncrun", "account", "contact"]


def create_support_group(apps, schema_editor):
    # Permissions are normally created after all migrations (post_migrate); on a fresh database
    # they do not exist yet, so create this app's now.
    app_config = apps.get_app_config("integrations")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=SUPPORT_GROUP)
    group.permissions.add(
        *Permission.objects.filter(
            content_type__app_label="integrations",
            codename__in=[f"view_{model}" for model in VIEWABLE],
        )
    )


def remove_support_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=SUPPORT_GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("integrations", "0003_mirror"),
    ]

    operations = [
        migrations.AlterField(
            model_name="connectionevent",
            name="kind",
            field=models.CharField(
                choices=[
                    ("connected", "Connected"),
                    ("reconnected", "Reconnected"),
                    ("disconnected", "Disconnected"),
                    ("connect_failed", "Connect failed"),
                    ("scopes_reduced", "Fewer scopes granted than asked"),
                    ("refreshed", "Token refreshed"),
                    ("refresh_failed", "Token refresh failed"),
                    ("reauth_required", "Re-authorization needed"),
                    ("profile_chosen", "Profile chosen"),
                    ("profile_lost", "Chosen profile no longer offered"),
                    ("mirror_cleared", "Mirror cleared"),
                    ("refresh_requested", "Token refresh requested by an admin"),
                    ("sync_requested", "Sync requested by an admin"),
                    ("reminder_sent", "Reconnect reminder sent"),
                ],
                max_length=40,
            ),
        ),
        migrations.RunPython(create_support_group, remove_support_group),
    ]
