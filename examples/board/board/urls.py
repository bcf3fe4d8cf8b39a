"""URL configuration for the board project."""

from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import include, path

from posts import views as posts_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/signup/", posts_views.signup, name="signup"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("posts.urls")),
]

if settings.DEBUG:
    urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)
